"""Filesystem faults seen from the commands: one sentence and exit code 2, before any work, nothing lost.

A read-only folder is simulated by refusing writes under it (conftest `read_only`: the
tests run as root); a full disk by a writer that leaves a partial file and then fails the
way torch and safetensors fail on a full tmpfs (measured: torch's zip writer raises
"unexpected pos", safetensors "No space left on device (os error 28)").
"""

import errno
import re

import accelerate.utils.other
import pytest
import torch
from conftest import save_file_on_a_full_disk, small_vae, torch_save_on_a_full_disk
from safetensors.torch import load_file

from tinyae.cli import main as tinyae_cli
from tinyae.config import load_recipe
from tinyae.errors import TinyaeError
from tinyae.models.student import Student
from tinyae.training.checkpoints import list_checkpoints
from tinyae.training.loop import distill
from tinyae.utils.atomic import atomic_file


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "vae"
    small_vae().save_pretrained(path)
    return path


@pytest.fixture
def student_dir(tmp_path, small_student_config):
    return Student(small_student_config).save_pretrained(tmp_path / "student")


def tiny_run(teacher_dir, photos, output):
    return ["--recipe", "smoke", "--teacher", str(teacher_dir), "--data", str(photos), "--output", str(output),
            "--student.encoder_widths", "[8]", "--student.decoder_widths", "[8]", "--data.resolution", "32",
            "--data.final_steps", "0", "--data.final_resolution", "null", "--data.holdout", "0",
            "--loss.lpips_weight", "0", "--loss.adv_weight", "0", "--train.steps", "4", "--train.batch_size", "2",
            "--train.checkpoint_every", "2", "--train.checkpoints_total_limit", "0", "--train.log_with", "null"]


def refused(args, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        tinyae_cli(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.startswith("error: ") and err.strip().count("\n") == 0, err
    return err


def never(what):
    def fail(*args, **kwargs):
        pytest.fail(f"{what} ran before the output folder was checked")
    return fail


# ---------------------------------------------------------------- case 7: read-only output folders


def test_distill_into_a_read_only_folder_stops_before_loading_anything(teacher_dir, photos, tmp_path, read_only,
                                                                       capsys, monkeypatch):
    folder = read_only(tmp_path / "ro")
    monkeypatch.setattr("tinyae.training.loop.load_run_teacher", never("loading the teacher"))
    err = refused(["distill", *tiny_run(teacher_dir, photos, folder / "run")], capsys)
    assert f"Cannot write to '{folder / 'run'}': permission denied" in err and "--output" in err


def test_export_into_a_read_only_folder_is_one_sentence(student_dir, tmp_path, read_only, capsys, monkeypatch):
    folder = read_only(tmp_path / "vae_approx")
    monkeypatch.setattr("tinyae.shipping.export.load_student", never("loading the student"))
    err = refused(["export", "--student", str(student_dir), "--to", "taesd", "--family", "sd", "--out", str(folder)],
                  capsys)
    assert f"Cannot write to '{folder}': permission denied" in err and "--out" in err


def test_inspect_vae_into_a_read_only_folder_stops_before_opening_the_vae(student_dir, photos, tmp_path, read_only,
                                                                          capsys, monkeypatch):
    folder = read_only(tmp_path / "reports")
    monkeypatch.setattr("tinyae.cli.inspect_vae.open_vae", never("opening the VAE"))
    err = refused(["inspect-vae", "--vae", str(student_dir), "--data", str(photos), "--out", str(folder / "r")],
                  capsys)
    assert f"Cannot write to '{folder / 'r'}': permission denied" in err


def test_evaluate_into_a_read_only_folder_stops_before_computing(student_dir, teacher_dir, photos, tmp_path,
                                                                 read_only, capsys, monkeypatch):
    folder = read_only(tmp_path / "eval")
    monkeypatch.setattr("tinyae.cli.evaluate.load_teacher", never("loading the teacher"))
    err = refused(["evaluate", "--student", str(student_dir), "--teacher", str(teacher_dir), "--data", str(photos),
                   "--out", str(folder)], capsys)
    assert f"Cannot write to '{folder}': permission denied" in err


# ---------------------------------------------------------------- case 8: a full disk mid-run


@pytest.mark.parametrize("module, name, full", [(torch, "save", torch_save_on_a_full_disk),
                                                (accelerate.utils.other, "safe_save_file", save_file_on_a_full_disk)])
def test_a_full_disk_at_a_checkpoint_says_so_and_keeps_the_last_good_one(teacher_dir, photos, tmp_path, monkeypatch,
                                                                          module, name, full):
    real = getattr(module, name)

    def fills_up_at_step_4(obj, f, *args, **kwargs):
        return (full if "checkpoint-4" in str(f) else real)(obj, f, *args, **kwargs)

    monkeypatch.setattr(module, name, fills_up_at_step_4)
    out = tmp_path / "run"
    recipe = load_recipe("smoke", tiny_run(teacher_dir, photos, out)[2:])
    last_good = re.escape(str(out / "checkpoints" / "checkpoint-2"))
    with pytest.raises(TinyaeError, match=f"Disk full at '{re.escape(str(out / 'checkpoints'))}'.*nothing was "
                                          f"replaced.*the last good checkpoint is '{last_good}'"):
        distill(recipe)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2"]  # no partial checkpoint-4
    monkeypatch.undo()
    recipe.train.resume = "latest"
    distill(recipe)  # space freed: the run continues from the last good checkpoint
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]


def test_an_oserror_enospc_anywhere_in_a_write_reads_as_disk_full(tmp_path):
    def full(tmp):
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(TinyaeError, match=f"Disk full at '{re.escape(str(tmp_path))}'.*nothing was replaced"):
        atomic_file(tmp_path / "metrics.json", full)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- non-finite numbers stop a run


def test_a_run_whose_loss_turns_non_finite_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
        teacher_dir, photos, tmp_path, capsys, monkeypatch):
    import tinyae.training.loop as loop

    real_step, calls = loop.distill_step, []

    def diverging(parts, *args, **kwargs):  # from the third step on the student's weights are NaN
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                next(parts.student.parameters()).fill_(float("nan"))
        return real_step(parts, *args, **kwargs)

    monkeypatch.setattr(loop, "distill_step", diverging)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        tinyae_cli(["distill", *tiny_run(teacher_dir, photos, out), "--train.log_every", "4"])
    err = capsys.readouterr().err.split("\r")[-1].split("distill: 100%")[-1]  # after the progress bar
    assert exit_info.value.code == 2 and "step 3" in err and "checkpoint-2" in err, err
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]
    assert not (out / "student").exists()
    kept = load_file(out / "checkpoints" / "checkpoint-2" / "student_ema" / "diffusion_pytorch_model.safetensors")
    assert all(torch.isfinite(t).all() for t in kept.values())


def test_fp16_mixed_precision_on_a_cpu_is_refused_rather_than_recorded(teacher_dir, photos, tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.setattr("tinyae.training.loop.load_run_teacher", never("loading the teacher"))
    err = refused(["distill", *tiny_run(teacher_dir, photos, tmp_path / "run"), "--train.mixed_precision", "fp16"],
                  capsys)
    assert "fp16" in err and "bf16" in err
    assert not (tmp_path / "run" / "recipe.json").exists()


def test_a_full_disk_while_writing_the_student_says_the_checkpoints_are_intact(teacher_dir, photos, tmp_path,
                                                                              monkeypatch):
    import tinyae.models.student

    real = tinyae.models.student.save_file

    def fills_up_at_the_student(tensors, filename, *args, **kwargs):
        full = ".student.tinyae" in str(filename)  # the temporary folder of the run's student/
        return (save_file_on_a_full_disk if full else real)(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(tinyae.models.student, "save_file", fills_up_at_the_student)
    out = tmp_path / "run"
    last = re.escape(str(out / "checkpoints" / "checkpoint-4"))
    recipe = load_recipe("smoke", tiny_run(teacher_dir, photos, out)[2:])
    with pytest.raises(TinyaeError, match=f"Disk full .*the checkpoints are intact .*'{last}'.*--resume latest"):
        distill(recipe)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    monkeypatch.undo()
    recipe.train.resume = "latest"
    distill(recipe)  # space freed: no step left to train, student/ is written
    assert (out / "student" / "diffusion_pytorch_model.safetensors").is_file()


def test_a_run_refused_during_setup_leaves_no_copied_sample_photos_behind(teacher_dir, photos, tmp_path, capsys):
    out = tmp_path / "run"
    refused(["distill", *tiny_run(teacher_dir, photos, out), "--data", "builtin:skimage", "--data.holdout", "1000"],
            capsys)
    assert not out.exists()
