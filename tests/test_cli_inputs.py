"""Bad command-line input on every command: one sentence, exit code 2, nothing written, before any work.

Sizes (resolutions, frame counts, batches) have upper bounds as well as lower ones, so a typo is refused
before it allocates instead of growing until the kernel kills the process; counts that make no sense (negative
steps, no samples, a negative seed) are refused rather than recorded; options a mode does not honour are
refused rather than dropped; and a command's output path is checked before its work, not after.
"""

import json
from pathlib import Path

import pytest

import tinyae.cli.bench_video as bench_video_cli
from tinyae.cli import main as tinyae_cli
from tinyae.config import load_recipe
from tinyae.errors import ConfigError, TeacherLoadError
from tinyae.models.teacher import load_teacher


def refused(argv: list[str], capsys) -> str:
    """The one-line error of a command that must stop with exit code 2."""
    with pytest.raises(SystemExit) as exit_info:
        tinyae_cli(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv, message", [
    # derive-teacher: sizes first, before the donor loads (100000 px crops grew to 23 GB and were killed)
    (["--resolution", "100000"], "--resolution must be at most 4096"),
    (["--resolution", "0"], "--resolution must be at least 32"),
    (["--resolution", "63"], "--resolution must be a multiple of 8"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--batch-size", "100000"], "--batch-size must be at most 1024"),
    (["--steps", "-3"], "--steps must be positive, got -3"),
    (["--lr", "-1"], "--lr must be a positive finite number, got -1"),
    (["--lr", "nan"], "--lr must be a positive finite number, got nan"),
    (["--seed", "-1"], "--seed cannot be negative"),
])
def test_derive_teacher_refuses_bad_sizes_and_counts_before_any_work(argv, message, tmp_path, capsys):
    out = tmp_path / "teacher"
    err = refused(["derive-teacher", "--data", str(tmp_path), "--out", str(out), *argv], capsys)
    assert message in err
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--video", "--frames", "6"], "--frames 6 does not encode to whole latents: the AutoencoderKLWan takes 1 + 4k"),
    (["--video", "--frames", "2"], "--frames 2 does not encode to whole latents"),
    (["--video", "--frames", "100001"], "--frames must be at most 1025"),
    (["--video", "--resolution", "30"], "--resolution must be at least 32"),
    (["--video", "--resolution", "100"], "--resolution must be a multiple of 8"),
    (["--resolution", "100000"], "--resolution must be at most 4096"),
    (["--batch-size", "100000"], "--batch-size must be at most 1024"),
    (["--eval-resolution", "64", "100000"], "--eval-resolution must be at most 4096"),
    (["--lr", "nan"], "--lr must be a positive finite number"),
    (["--steps", "0"], "--steps must be positive"),
    (["--frames", "9"], "--frames applies to the --video teacher only"),
])
def test_train_teacher_refuses_bad_sizes_and_frame_counts_before_any_work(argv, message, tmp_path, capsys):
    out = tmp_path / "teacher"
    err = refused(["train-teacher", "--data", str(tmp_path), "--out", str(out), *argv], capsys)
    assert message in err
    assert not out.exists()


@pytest.mark.parametrize("flag", [["--precision", "bf16"], ["--lpips-weight", "0.1"], ["--eval-data", "KODAK"],
                                  ["--eval-resolution", "64"], ["--max-zoom-out", "2"], ["--workers", "2"]])
def test_train_teacher_video_refuses_the_image_options_it_would_drop(flag, tmp_path, capsys):
    err = refused(["train-teacher", "--video", "--data", str(tmp_path), "--out", str(tmp_path / "t"), *flag], capsys)
    assert f"{flag[0]} apply to the image teacher only" in err


def test_cache_latents_refuses_zero_samples_instead_of_building_the_default(tmp_path, capsys):
    out = tmp_path / "cache"
    err = refused(["cache-latents", "--teacher", "tiny", "--data", str(tmp_path), "--out", str(out),
                   "--samples", "0"], capsys)
    assert "--samples must be positive, got 0" in err
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--width", "0"], "--width must be positive, got 0"),
    (["--height", "100000"], "--height must be at most 4096"),
    (["--frames", "100001"], "--frames must be at most 1025"),
    (["--frames", "1025", "--width", "4096", "--height", "4096"], "pixels, more than the 211M tinyae benchmarks"),
    (["--threads", "0"], "--threads must be positive, got 0"),
    (["--warmup", "-1"], "--warmup cannot be negative, got -1"),
    (["--repeats", "0"], "--repeats must be positive"),
])
def test_bench_video_refuses_bad_sizes_before_building_a_model(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(bench_video_cli, "video_bench", lambda *a, **k: pytest.fail("the benchmark ran"))
    assert message in refused(["bench-video", *argv], capsys)


def test_bench_video_writes_its_report_into_a_missing_folder_and_checks_the_path_first(tmp_path, capsys,
                                                                                     monkeypatch):
    results = {"teacher": "t", "student": "s", "frames": 5, "width": 64, "height": 64, "latents": [1], "threads": 1,
               "repeats": 1, "rows": []}
    monkeypatch.setattr(bench_video_cli, "video_bench", lambda *a, **k: results)
    out = tmp_path / "bv" / "bv1.json"
    tinyae_cli(["bench-video", "--frames", "5", "--width", "64", "--height", "64", "--out", str(out)])
    assert json.loads(out.read_text()) == results
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(bench_video_cli, "video_bench", lambda *a, **k: pytest.fail("the benchmark ran"))
    err = refused(["bench-video", "--out", str(tmp_path / "file" / "bv.json")], capsys)
    assert "is a file, not a folder" in err
    err = refused(["bench-video", "--out", str(tmp_path / "bv")], capsys)
    assert "it is a folder; pass a file name to --out" in err


def test_bench_train_checks_its_output_path_before_the_benchmark(tmp_path, capsys, monkeypatch):
    import tinyae.cli.bench_train as bench_train_cli

    monkeypatch.setattr(bench_train_cli, "bench_train", lambda *a, **k: pytest.fail("the benchmark ran"))
    (tmp_path / "file").write_text("x")
    assert "is a file, not a folder" in refused(["bench-train", "--out", str(tmp_path / "file" / "b.json")], capsys)
    assert "--resolutions must be at most 4096" in refused(["bench-train", "--resolutions", "100000"], capsys)


@pytest.mark.parametrize("argv, message", [
    (["bench", "--resolutions", "100000"], "--resolutions must be at most 4096"),
    (["bench", "--batch", "100000"], "--batch must be at most 1024"),
    (["bench", "--warmup", "-1"], "--warmup cannot be negative"),
    (["evaluate", "--student", "s", "--teacher", "tiny", "--data", "d", "--batch-size", "100000"],
     "--batch-size must be at most 1024"),
    (["evaluate", "--student", "s", "--teacher", "tiny", "--data", "d", "--frames", "100001"],
     "--frames must be at most 1025"),
    (["inspect-vae", "--vae", "tiny", "--resolution", "100000"], "--resolution must be at most 4096"),
    (["cache-latents", "--teacher", "tiny", "--out", "c", "--batch-size", "100000"], "--batch-size must be at most"),
    (["distill", "--teacher", "tiny", "--train.batch_size", "100000"], "train.batch_size must be between 1 and 1024"),
    (["distill", "--teacher", "tiny-wan", "--data.frames", "100001"], "data.frames must be between 1 and 1025"),
])
def test_every_command_bounds_its_sizes_before_allocating(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert message in refused(argv, capsys)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("teacher", ["tiny", "tiny-wan"])
def test_a_negative_training_seed_is_refused_for_image_and_video_runs(teacher, tmp_path, capsys):
    out = tmp_path / "run"
    err = refused(["distill", "--teacher", teacher, "--train.seed", "-1", "--output", str(out)], capsys)
    assert "Invalid value for --train.seed: train.seed cannot be negative" in err
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--parallel", "0"], "--parallel must be positive, got 0"),
    (["--seeds", "0", "-1"], "--seeds cannot be negative, got -1"),
    (["--steps", "0"], "--steps must be positive, got 0"),
])
def test_study_refuses_bad_counts_by_their_own_flags_before_any_work(argv, message, tmp_path, capsys):
    out = tmp_path / "study"
    err = refused(["study", "--kodak", str(tmp_path), "--out", str(out), *argv], capsys)
    assert message in err and "--train.steps" not in err
    assert not out.exists()


def test_a_run_too_short_for_the_recipes_final_phase_is_told_to_drop_it():
    with pytest.raises(ConfigError) as info:
        load_recipe("video", ["--teacher", "wan2.1", "--train.steps", "2"])
    message = str(info.value)
    assert message.startswith("Invalid value for --train.steps:") and "--data.final_steps 0" in message


def test_an_unknown_teacher_lists_the_video_presets_too():
    with pytest.raises(TeacherLoadError) as info:
        load_teacher("hunyuan")
    assert "hunyuan-video" in str(info.value) and "wan2.1" in str(info.value) and "sdxl" in str(info.value)


def test_a_pipeline_folder_without_subfolder_is_told_to_pass_teacher_subfolder_vae(tmp_path):
    (tmp_path / "pipe" / "vae").mkdir(parents=True)
    (tmp_path / "pipe" / "vae" / "config.json").write_text("{}")
    with pytest.raises(TeacherLoadError, match="pass --teacher.subfolder vae"):
        load_teacher(str(tmp_path / "pipe"))


def test_help_and_docs_give_the_tiny_wan_budget_it_was_trained_with():
    import tinyae.cli.train_teacher as train_teacher_cli

    shipped = json.loads((Path(__file__).parents[1] / "weights" / "tiny-wan" / "training.json").read_text())
    minutes = round(shipped["train_minutes"])
    assert f"--video --data builtin:skimage --out weights/tiny-wan --max-minutes {minutes}" in train_teacher_cli.__doc__
    video_md = (Path(__file__).parents[1] / "docs" / "video.md").read_text()
    assert f"--max-minutes {minutes} " in video_md
