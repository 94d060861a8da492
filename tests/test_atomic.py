"""Exports and checkpoints are all or nothing: an interruption loses nothing and leaves nothing half-written."""

import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import save_file_on_a_full_disk, torch_save_on_a_full_disk

import tinyae.models.student
from tinyae.errors import ExportError, TinyaeError
from tinyae.models.student import Student
from tinyae.shipping.export import export_all, export_diffusers, export_taesd, taesd_file_names
from tinyae.utils.atomic import atomic_file, atomic_folder, temporary_prefix


class Interrupted(Exception):
    pass


def _interrupt(*args, **kwargs):
    raise Interrupted("power cut while writing weights")


def test_an_interrupted_export_leaves_no_folder_and_no_temporary_files(tmp_path, small_student_config, monkeypatch):
    monkeypatch.setattr(tinyae.models.student, "save_file", _interrupt)
    with pytest.raises(Interrupted):
        Student(small_student_config).save_pretrained(tmp_path / "student")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_overwrite_keeps_the_previous_export(tmp_path, small_student_config, monkeypatch):
    first = Student(small_student_config)
    first.save_pretrained(tmp_path / "student")
    monkeypatch.setattr(tinyae.models.student, "save_file", _interrupt)
    with pytest.raises(Interrupted):
        Student(small_student_config).save_pretrained(tmp_path / "student", overwrite=True)
    monkeypatch.undo()
    kept = Student.from_pretrained(tmp_path / "student")
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), kept.state_dict().values()))
    assert [p.name for p in tmp_path.iterdir()] == ["student"]


def test_an_existing_folder_is_refused_unless_overwrite_is_asked(tmp_path, small_student_config):
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "mine.txt").write_text("keep me")
    with pytest.raises(ExportError, match="already exists"):
        Student(small_student_config).save_pretrained(tmp_path / "student")
    assert (tmp_path / "student" / "mine.txt").read_text() == "keep me"


def test_atomic_file_keeps_the_old_content_when_the_writer_fails(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise Interrupted

    with pytest.raises(Interrupted):
        atomic_file(target, half_then_fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_atomic_folders_are_readable_by_others(tmp_path):
    with atomic_folder(tmp_path / "out") as tmp:
        (tmp / "a").write_text("x")
    assert (tmp_path / "out").stat().st_mode & 0o055 == 0o055  # not mkdtemp's private 0700


# ---------------------------------------------------------------- a kill -9 mid-export, modes, a full disk

# ComfyUI lists every file under models/vae_approx (recursing into hidden folders, skipping only .git) whose
# extension is one of these (supported_pt_extensions, recursive_search and filter_files_extensions in
# https://github.com/comfyanonymous/ComfyUI/blob/master/folder_paths.py).
COMFYUI_MODEL_EXTENSIONS = {".ckpt", ".pt", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}

KILLED_EXPORT = textwrap.dedent('''
    import sys, time
    import safetensors.torch

    def stuck(tensors, filename, metadata=None):  # half a file on disk, then the process is killed
        with open(filename, "wb") as f:
            f.write(b"half a safetensors file")
        print("writing", flush=True)
        time.sleep(600)

    safetensors.torch.save_file = stuck
    from tinyae.config import StudentConfig
    from tinyae.models.student import Student
    from tinyae.shipping.export import export_diffusers, export_taesd

    student = Student(StudentConfig(latent_channels=4, encoder_widths=[8], decoder_widths=[8]))
    target, kind = sys.argv[1], sys.argv[2]
    export_taesd(student, target, "sd") if kind == "taesd" else export_diffusers(student, target)
''')


def comfyui_lists(folder):
    """The model files ComfyUI would offer from `folder`."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and ".git" not in p.parts and p.suffix.lower() in COMFYUI_MODEL_EXTENSIONS)


def kill_mid_export(tmp_path, target, kind):
    script = tmp_path / "export.py"
    script.write_text(KILLED_EXPORT)
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(target), kind], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline().strip() == b"writing"
    finally:
        proc.send_signal(signal.SIGKILL)  # no finally blocks, no atexit
        proc.wait()


@pytest.mark.parametrize("kind", ["taesd", "diffusers"])
def test_a_killed_export_leaves_nothing_comfyui_lists_and_the_next_export_cleans_up(tmp_path, small_student_config,
                                                                                      kind):
    vae_approx = tmp_path / "ComfyUI" / "models" / "vae_approx"
    vae_approx.mkdir(parents=True)
    (vae_approx / "taef1_decoder.pth").write_bytes(b"someone else's model")
    target = vae_approx if kind == "taesd" else vae_approx / "mine"
    kill_mid_export(tmp_path, target, kind)
    assert comfyui_lists(vae_approx) == ["taef1_decoder.pth"]  # the half-written file is under no model name

    student = Student(small_student_config)
    if kind == "taesd":
        with pytest.warns(UserWarning, match="layout that ComfyUI"):
            export_taesd(student, vae_approx, "sd")
        expected = sorted(["taef1_decoder.pth", *taesd_file_names("taesd-custom")])  # a small student
    else:
        export_diffusers(student, target)
        expected = ["mine/diffusion_pytorch_model.safetensors", "taef1_decoder.pth"]
    assert comfyui_lists(vae_approx) == expected
    leftovers = [p.name for p in vae_approx.rglob(".*")]
    assert leftovers == [], leftovers  # the killed run's temporaries are gone


@pytest.mark.filterwarnings("ignore:.*layout that ComfyUI")
def test_every_file_an_export_writes_has_the_umask_permissions(tmp_path, small_student_config):
    student = Student(small_student_config)
    old = os.umask(0o022)
    try:
        student.save_pretrained(tmp_path / "student", fp16_variant=True)
        export_all(student, tmp_path / "all", "sd")
        export_taesd(student, tmp_path / "vae_approx", "sd")
        atomic_file(tmp_path / "notes.json", lambda tmp: tmp.write_text("{}"))
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777 for p in tmp_path.rglob("*")}
    assert all(mode == (0o755 if (tmp_path / name).is_dir() else 0o644) for name, mode in modes.items()), modes


def test_a_full_disk_during_an_export_says_so_and_keeps_the_previous_export(tmp_path, small_student_config,
                                                                            monkeypatch):
    first = Student(small_student_config)
    first.save_pretrained(tmp_path / "student")
    monkeypatch.setattr(tinyae.models.student, "save_file", save_file_on_a_full_disk)
    with pytest.raises(TinyaeError, match=f"Disk full at '{re.escape(str(tmp_path))}.*nothing was replaced"):
        Student(small_student_config).save_pretrained(tmp_path / "student", overwrite=True)
    monkeypatch.undo()
    kept = Student.from_pretrained(tmp_path / "student")
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), kept.state_dict().values()))
    assert [p.name for p in tmp_path.iterdir()] == ["student"]


def test_a_full_disk_during_a_taesd_export_keeps_the_pair_that_was_there(tmp_path, small_student_config, monkeypatch):
    student = Student(small_student_config)
    with pytest.warns(UserWarning):
        export_taesd(student, tmp_path, "sd")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(torch, "save", torch_save_on_a_full_disk)
    with pytest.raises(TinyaeError, match="Disk full at .*nothing was replaced"), pytest.warns(UserWarning):
        export_taesd(Student(small_student_config), tmp_path, "sd", overwrite=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_temporaries_of_older_taesd_exports_are_removed_too(tmp_path, small_student_config):
    legacy = tmp_path / ".tinyae-taesd.tmp-k2j4h1x0"  # what a killed export of earlier versions left
    legacy.mkdir()
    (legacy / "taesd_decoder.safetensors").write_bytes(b"half")
    with pytest.warns(UserWarning, match="layout that ComfyUI"):
        export_taesd(Student(small_student_config), tmp_path, "sd")
    assert comfyui_lists(tmp_path) == sorted(taesd_file_names("taesd-custom"))


def test_a_folder_caught_mid_replacement_by_a_kill_is_put_back(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    moved_aside = temporary_prefix("student").replace(f"-{os.getpid()}-", f"-{dead.pid}-") + "old.tmp"
    (tmp_path / moved_aside).mkdir()
    (tmp_path / moved_aside / "config.json").write_text("{}")
    atomic_file(tmp_path / "notes.txt", lambda tmp: tmp.write_text("x"))  # any later write into the folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "student"]
    assert (tmp_path / "student" / "config.json").read_text() == "{}"
