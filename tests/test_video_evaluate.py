"""Evaluating a video student: per-frame metrics and flicker of the right pairs, latent R², decode time, one CLI."""

import json

import pytest
import torch
from safetensors.torch import save_file
from test_clips import write_video

from tinyae.cli import main as tinyae_cli
from tinyae.errors import ConfigError, DataError, ExportError
from tinyae.evaluation.metrics import LatentStats
from tinyae.evaluation.video_evaluate import VIDEO_COMPARISONS, evaluate_video, video_summary, write_video_report
from tinyae.evaluation.video_metrics import video_metrics
from tinyae.models.student import Student
from tinyae.models.video_student import VideoStudent, is_video_student
from tinyae.models.video_teacher import build_video_teacher


def small_teacher():
    """A Wan 2.1 VAE of the real factors (8x space, 4x time) and tiny widths."""
    return build_video_teacher("wan2.1", base_dim=8, dim_mult=[1, 1, 1, 1], num_res_blocks=1)


def small_student(**overrides) -> VideoStudent:
    torch.manual_seed(0)
    return VideoStudent(**({"encoder_width": 8, "decoder_widths": (16, 8, 8, 8)} | overrides)).eval()


@pytest.fixture(scope="module")
def models():
    return small_student(), small_teacher()


@pytest.fixture(scope="module")
def clips():
    return torch.rand(2, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.fixture(scope="module")
def evaluated(models, clips):
    student, teacher = models
    return evaluate_video(student, teacher, clips)


def test_each_comparison_is_the_per_frame_metrics_and_flicker_of_its_two_clips(models, clips, evaluated):
    student, teacher = models
    z = teacher.encode(clips)
    with torch.no_grad():
        decoded = {"original": clips, "teacher": teacher.decode(z).clamp(-1, 1),
                   "decoder": student.decode(z).sample.clamp(-1, 1),
                   "student_roundtrip": student.decode(student.encode(clips).latents).sample.clamp(-1, 1)}
    assert set(evaluated["metrics"]) == set(VIDEO_COMPARISONS)
    for name, (a, b, _) in VIDEO_COMPARISONS.items():
        expected = video_metrics(decoded[a], decoded[b])
        assert set(evaluated["metrics"][name]) == {"psnr", "ssim", "lpips", "flicker", "temporal_psnr"}
        for metric, values in expected.items():
            assert evaluated["metrics"][name][metric] == pytest.approx(float(values.mean()), rel=1e-5)
            assert len(evaluated["per_clip"][name][metric]) == 2


def test_the_latent_r2_is_latent_stats_over_every_latent_frame(models, clips, evaluated):
    student, teacher = models
    z, zs = teacher.encode(clips), student.encode(clips).latents
    stats = LatentStats().update(zs.transpose(1, 2).flatten(0, 1), z.transpose(1, 2).flatten(0, 1))
    assert evaluated["latents"]["r2"] == pytest.approx(stats.r2().tolist(), rel=1e-5)
    assert evaluated["latent_shape"] == [16, 2, 4, 4]  # 5 frames -> 2 latents, 32 px -> 4


def test_decode_time_is_reported_for_both_student_modes_and_the_teacher_with_the_speed_ups(evaluated):
    seconds, speedup = evaluated["decode_seconds"], evaluated["speedup"]
    assert set(seconds) == {"student_parallel", "student_streaming", "teacher"} and min(seconds.values()) > 0
    for mode in ("student_parallel", "student_streaming"):
        assert speedup[mode] == seconds["teacher"] / seconds[mode]


def test_a_reference_vae_is_timed_against_the_student_on_the_same_latents(models, clips, tmp_path):
    student, teacher = models
    reference = build_video_teacher("wan2.1", base_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1)
    results = evaluate_video(student, teacher, clips, with_lpips=False, reference=reference)
    ref = results["reference"]
    assert ref["model"]["name"] == "wan2.1 (random weights)" and ref["seconds"] > 0
    assert ref["speedup_parallel"] == ref["seconds"] / ref["student_parallel_seconds"]
    assert ref["speedup_streaming"] == ref["seconds"] / ref["student_streaming_seconds"]
    flat = video_summary(results)
    assert flat["speedup_vs_reference_parallel"] == ref["speedup_parallel"]
    assert flat["reference_vae"] == "wan2.1 (random weights)"
    assert "x faster than the reference" in write_video_report(results, tmp_path)["md"].read_text()
    assert evaluate_video(student, teacher, clips, with_lpips=False)["reference"] is None


def test_the_summary_is_flat_json_and_the_report_holds_the_numbers(evaluated, tmp_path):
    flat = video_summary(evaluated)
    assert flat["psnr_vs_teacher"] == evaluated["metrics"]["decoder_vs_teacher"]["psnr"]
    assert flat["flicker_vs_teacher"] == evaluated["metrics"]["decoder_vs_teacher"]["flicker"]
    assert flat["latent_r2"] == evaluated["latents"]["r2_mean"]
    json.dumps(flat, allow_nan=False)
    paths = write_video_report(evaluated, tmp_path)
    assert json.loads(paths["json"].read_text())["metrics"].keys() == evaluated["metrics"].keys()
    assert "flicker" in paths["md"].read_text()


def test_clips_that_break_the_frame_rule_or_another_latent_space_are_refused_in_one_sentence(models, clips):
    student, teacher = models
    with pytest.raises(DataError, match="1 \\+ 4k frames"):
        evaluate_video(student, teacher, clips[:, :, :4], with_lpips=False)
    with pytest.raises(ConfigError, match="48 latent channels .* has 16"):
        evaluate_video(small_student(latent_channels=48, patch_size=2), teacher, clips, with_lpips=False)


def test_a_video_student_with_nan_weights_is_refused_instead_of_scored_n_a(clips):
    nan = small_student()  # issue 26, case 4: its metrics read "n/a" and its temporal PSNR "inf" before
    with torch.no_grad():
        nan.decoder[1].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ExportError, match="not finite numbers .*evaluate a checkpoint from before"):
        evaluate_video(nan, small_teacher(), clips, with_lpips=False)


def test_only_video_students_are_taken_for_video_students(models, tmp_path, small_student_config):
    student, _ = models
    student.save_pretrained(tmp_path / "video")
    (tmp_path / "run").mkdir()
    student.save_pretrained(tmp_path / "run" / "student")
    save_file(student.state_dict(), tmp_path / "taew2_1.safetensors")
    Student(small_student_config).save_pretrained(tmp_path / "image")
    assert is_video_student(tmp_path / "video") and is_video_student(tmp_path / "run")
    assert is_video_student(tmp_path / "taew2_1.safetensors")
    assert not is_video_student(tmp_path / "image") and not is_video_student(tmp_path / "missing")


@pytest.fixture(scope="module")
def saved(models, tmp_path_factory):
    student, teacher = models
    root = tmp_path_factory.mktemp("video-models")
    student.save_pretrained(root / "student")
    teacher.vae.save_pretrained(root / "teacher")
    return root


def test_tinyae_evaluate_measures_a_video_student_on_clips_from_photos(saved, photos, tmp_path, capsys):
    tinyae_cli(["evaluate", "--student", str(saved / "student"), "--teacher", str(saved / "teacher"), "--data",
                str(photos), "--frames", "5", "--resolution", "32", "--limit", "2", "--out", str(tmp_path / "eval")])
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["n_clips"] == 2 and report["frames"] == 5 and report["clip_source"] == "pans and zooms over photos"
    assert report["metrics"]["decoder_vs_teacher"]["psnr"] is not None
    assert "temporal PSNR" in capsys.readouterr().out and (tmp_path / "eval" / "eval.md").is_file()


def test_a_folder_of_video_files_gives_clips_from_the_videos(saved, tmp_path):
    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "ramp.mkv", 12)
    tinyae_cli(["evaluate", "--student", str(saved / "student"), "--teacher", str(saved / "teacher"), "--data",
                str(tmp_path / "videos"), "--frames", "5", "--resolution", "32", "--out", str(tmp_path / "eval")])
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["clip_source"] == "video files" and report["clips"] == ["ramp.mkv"]


@pytest.mark.parametrize("flags, named", [
    (["--frames", "6"], "6 frames do not fit the student's time factor"),
    (["--resolution", "36"], "not multiples of the student's downscale factor 8"),
    (["--resolution", "32", "64"], "one --resolution"),
])
def test_video_arguments_that_cannot_work_are_one_sentence_before_the_teacher_loads(saved, photos, tmp_path,
                                                                                     monkeypatch, capsys, flags, named):
    monkeypatch.setattr("tinyae.cli.evaluate.load_video_teacher", lambda *a, **k: pytest.fail("the teacher loaded"))
    with pytest.raises(SystemExit) as exit_info:
        tinyae_cli(["evaluate", "--student", str(saved / "student"), "--teacher", "wan2.1", "--data", str(photos),
                    "--out", str(tmp_path / "eval"), *flags])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert named in err, err
