"""Evaluation: the comparisons are wired to the right outputs, and the report files hold the documented keys."""

import json
import math

import pytest
import torch
from conftest import small_vae
from PIL import Image
from torch import nn

from tinyae.cli import main as tinyae_cli
from tinyae.data.images import list_images, load_eval_images
from tinyae.errors import ConfigError, DataError
from tinyae.evaluation.evaluate import (
    COMPARISONS,
    METRICS,
    evaluate,
    evaluate_folder,
    format_table,
    summary,
    write_report,
)
from tinyae.evaluation.metrics import psnr
from tinyae.models.student import Student
from tinyae.models.teacher import Teacher

SUMMARY_KEYS = {
    "resolution", "n_images", "psnr_vs_teacher", "ssim_vs_teacher", "ms_ssim_vs_teacher", "lpips_vs_teacher",
    "chroma_diff_vs_teacher", "saturation_diff_vs_teacher", "colour_error_vs_teacher",
    "psnr_vs_original", "lpips_vs_original", "roundtrip_psnr_vs_teacher", "roundtrip_lpips_vs_teacher",
    "chroma_diff_vs_original", "saturation_diff_vs_original", "colour_error_vs_original",
    "teacher_psnr_vs_original", "latent_mse", "latent_r2",
    "max_activation", "fp16_overflow", "fp16_psnr_vs_fp32", "bf16_psnr_vs_fp32",  # the fp16/bf16 safety check
}


class TeacherAsStudent(nn.Module):
    """A 'student' that is its teacher: every comparison with the teacher must be perfect."""

    def __init__(self, teacher: Teacher):
        super().__init__()
        self.teacher = teacher
        self.latent_channels = teacher.latent_channels

    def encode(self, x):
        return self.teacher.encode(x)

    def decode(self, z):
        return self.teacher.decode(z)


@pytest.fixture(scope="module")
def models():
    from tinyae.config import StudentConfig

    teacher = Teacher(small_vae(), scaling_factor=0.5, shift_factor=0.1, name="small")
    torch.manual_seed(0)
    student = Student(StudentConfig(latent_channels=4, encoder_widths=[16], decoder_widths=[16],
                                    encoder_blocks=[1, 1, 1, 1], decoder_blocks=[1, 1, 1, 1]))
    return student, teacher


@pytest.fixture(scope="module")
def evaluated(models, photos, tmp_path_factory):
    """One evaluation of the small student on 4 of the photos at 64 px (batches of 3 and 1), and its report."""
    student, teacher = models
    student.train()
    results, images = evaluate_folder(student, teacher, photos, resolutions=[64], limit=4, batch_size=3, progress=False)
    out = tmp_path_factory.mktemp("eval")
    (out / "checkpoint.txt").write_text("keep me")
    paths = write_report(results, out, student, teacher, images, grid_images=2)
    return results, images, out, paths


def test_every_comparison_has_every_metric_per_image(evaluated, photos):
    results, images, _, _ = evaluated
    run = results["resolutions"]["64"]
    assert run["n_images"] == 4 and run["resolution"] == [64, 64]
    assert run["images"] == [p.name for p in list_images(photos)[:4]]
    assert set(run["metrics"]) == set(COMPARISONS)
    for name in COMPARISONS:
        assert set(run["metrics"][name]) == set(METRICS)
        for metric in METRICS:
            assert len(run["per_image"][name][metric]) == 4
            assert math.isnan(run["metrics"][name]["ms_ssim"])  # 64 px is below MS-SSIM's 161 px
    assert len(run["latents"]["r2"]) == 4 and len(run["per_image"]["latent_mse"]) == 4
    assert run["latents"]["mse"] > 0


def test_untrained_student_scores_far_below_the_teacher_ceiling(evaluated):
    m = evaluated[0]["resolutions"]["64"]["metrics"]
    assert m["decoder_vs_teacher"]["psnr"] < 20
    assert m["decoder_vs_teacher"]["lpips"] > 0.1
    assert m["decoder_vs_original"]["psnr"] < m["teacher_roundtrip_vs_original"]["psnr"] + 5


def test_teacher_reference_is_the_teachers_own_round_trip(evaluated, models):
    results, images, _, _ = evaluated
    _, teacher = models
    expected = psnr(teacher.decode(teacher.encode(images[0])).clamp(-1, 1), images[0])
    assert results["resolutions"]["64"]["per_image"]["teacher_roundtrip_vs_original"]["psnr"] == pytest.approx(
        expected.tolist(), abs=1e-4)


def test_a_student_identical_to_its_teacher_is_perfect(models, photos):
    _, teacher = models
    images = load_eval_images(list_images(photos)[:2], 64)
    run = evaluate(TeacherAsStudent(teacher), teacher, images)["resolutions"]["64"]
    m = run["metrics"]
    for name in ("decoder_vs_teacher", "encoder_roundtrip_vs_teacher"):
        assert m[name]["psnr"] == math.inf
        assert m[name]["ssim"] == pytest.approx(1.0, abs=1e-5)
        assert m[name]["lpips"] == 0.0
    assert m["decoder_vs_original"]["psnr"] == pytest.approx(m["teacher_roundtrip_vs_original"]["psnr"])
    assert run["latents"]["mse"] == 0.0 and run["latents"]["r2"] == pytest.approx([1.0] * 4)


def test_report_files_hold_the_documented_keys(evaluated):
    results, _, out, paths = evaluated
    assert {p.name for p in out.iterdir()} >= {"eval.json", "eval.md", "grid_64px.png", "checkpoint.txt"}
    assert (out / "checkpoint.txt").read_text() == "keep me"  # other files in the folder are untouched
    data = json.loads(paths["json"].read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert {"format", "teacher", "student", "lpips_net", "notes", "comparisons", "resolutions"} <= set(data)
    assert data["format"] == "tinyae-eval/1" and data["teacher"]["name"] == "small"
    assert data["student"]["encoder_params"] > 0 and data["student"]["arch"]["encoder_widths"] == [16, 16, 16, 16]
    run = data["resolutions"]["64"]
    assert run["metrics"]["decoder_vs_teacher"]["ms_ssim"] is None  # NaN is written as null
    assert run["metrics"]["decoder_vs_teacher"]["psnr"] == pytest.approx(
        results["resolutions"]["64"]["metrics"]["decoder_vs_teacher"]["psnr"])
    md = paths["md"].read_text()
    assert "| decoder_vs_teacher" in md and "R² mean" in md and "![grid_64px](grid_64px.png)" in md
    assert "161 px" in md  # the MS-SSIM note


def test_grid_shows_one_row_per_image(evaluated):
    with Image.open(evaluated[3]["grid_64"]) as grid:
        width, height = grid.size
    assert width > height > 300  # 4 columns, 2 rows


def test_summary_is_flat_and_json_ready(evaluated):
    flat = summary(evaluated[0])
    assert set(flat) == SUMMARY_KEYS
    assert flat["resolution"] == 64 and flat["n_images"] == 4
    assert flat["ms_ssim_vs_teacher"] is None
    assert flat["fp16_overflow"] is False
    assert all(isinstance(flat[k], float) for k in SUMMARY_KEYS - {"resolution", "n_images", "ms_ssim_vs_teacher",
                                                                   "fp16_overflow"})
    json.dumps(flat, allow_nan=False)


def test_terminal_table_lists_each_comparison(evaluated):
    table = format_table(evaluated[0])
    assert all(f"| {name}" in table for name in COMPARISONS)
    assert "n/a" in table  # MS-SSIM at 64 px


def test_student_is_left_in_training_mode(evaluated, models):
    assert models[0].training


def test_bad_inputs_get_clear_errors(models):
    student, teacher = models
    with pytest.raises(DataError, match="multiple of the teacher's downscale factor 8"):
        evaluate(student, teacher, torch.zeros(1, 3, 60, 60))
    with pytest.raises(DataError, match="non-empty"):
        evaluate(student, teacher, torch.zeros(0, 3, 64, 64))
    other = Teacher(small_vae(latent_channels=16), scaling_factor=1.0, name="sixteen")
    with pytest.raises(ConfigError, match="has 4 latent channels but the teacher .sixteen. has 16"):
        evaluate(student, other, torch.zeros(1, 3, 64, 64))


# ---------------------------------------------------------------- odd folders and typos


def test_a_truncated_jpeg_is_skipped_and_counted_like_any_unreadable_image(models, photos, tmp_path):
    student, teacher = models
    folder = tmp_path / "kodak"
    folder.mkdir()
    for path in list_images(photos)[:5]:
        Image.open(path).convert("RGB").save(folder / f"{path.stem}.jpg")
    data = (folder / "astronaut.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.warns(UserWarning) as record:
        results, images = evaluate_folder(student, teacher, folder, resolutions=[32], progress=False)
    warned = [str(w.message) for w in record]
    assert [m for m in warned if "cut.jpg" in m and "truncated" in m] and [m for m in warned if "broken.png" in m]
    run = results["resolutions"]["32"]
    assert run["n_images"] == 5 and len(run["images"]) == 5 and "cut.jpg" not in run["images"]
    assert images[0].shape == (5, 3, 32, 32)
    assert results["unreadable_images"] == ["broken.png", "cut.jpg"]


def test_every_resolution_is_checked_before_any_image_is_read(models, photos, monkeypatch):
    student, teacher = models
    monkeypatch.setattr("tinyae.evaluation.evaluate.scan_images", lambda *a, **k: pytest.fail("images were read"))
    with pytest.raises(DataError, match="60 px .*multiple of .*8"):
        evaluate_folder(student, teacher, photos, resolutions=[64, 60], progress=False)


def test_a_local_path_typo_is_not_reported_as_a_missing_hub_repo(photos, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for flag, typo in (("--student", "runs/smok"), ("--teacher", "runs/vea")):
        args = {"--student": "runs/smok", "--teacher": "tiny", "--data": str(photos)} | {flag: typo}
        with pytest.raises(SystemExit):
            tinyae_cli(["evaluate", *[item for pair in args.items() for item in pair]])
        err = capsys.readouterr().err
        assert f"'{typo}'" in err and "'runs' exists" in err and "Could not fetch" not in err, err


@pytest.mark.parametrize("flags, named", [
    (["--resolution", "64", "16"], "16 px are below the 32 px LPIPS needs"),
    (["--resolution", "8192"], "8192 px are above 4096 px"),
    (["--batch-size", "0"], "--batch-size must be positive, got 0"),
    (["--limit", "0"], "--limit must be positive, got 0"),
])
def test_evaluate_arguments_that_cannot_work_are_one_sentence_before_anything_loads(photos, tmp_path, monkeypatch,
                                                                                  capsys, flags, named):
    monkeypatch.setattr("tinyae.cli.evaluate.load_teacher", lambda *a, **k: pytest.fail("the teacher was loaded"))
    with pytest.raises(SystemExit) as exit_info:
        tinyae_cli(["evaluate", "--student", "s", "--teacher", "tiny", "--data", str(photos), "--out",
                    str(tmp_path / "eval"), *flags])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert named in err, err
