"""`tinyae bench-video`: one run measures the student's parallel and streaming decode against the teacher's."""

import pytest
import torch

from tinyae.cli import parse
from tinyae.errors import ConfigError
from tinyae.evaluation.video_bench import format_video_bench, video_bench
from tinyae.models.video_student import VideoStudent
from tinyae.models.video_teacher import build_video_teacher


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    teacher = build_video_teacher("wan2.1", base_dim=8, dim_mult=[1, 2, 2], num_res_blocks=1,
                                  temperal_downsample=[True, True])
    return VideoStudent(encoder_width=8, decoder_widths=(16, 8, 8, 8)), teacher


@pytest.mark.slow  # MAC counting under FlopCounterMode takes seconds on a busy CPU
def test_the_video_bench_reports_time_memory_and_macs_of_both_decode_modes_against_the_teacher(models):
    student, teacher = models
    results = video_bench(frames=5, width=32, height=32, student=student, teacher_model=teacher, chunk_size=2)
    rows = {r["model"]: r for r in results["rows"]}
    assert list(rows) == ["student parallel", "student parallel, chunks of 2", "student streaming", "teacher"]
    assert results["latents"] == (1, 16, 2, 4, 4) and results["chunk_size"] == 2
    for row in rows.values():
        assert row["median_s"] > 0 and row["peak_mem_mb"] is not None and row["macs"] > 0
    # chunks and streaming run the same convolutions, a few frames or one frame at a time
    assert rows["student parallel"]["macs"] == rows["student streaming"]["macs"]
    assert rows["student parallel"]["macs"] == rows["student parallel, chunks of 2"]["macs"]
    assert rows["student parallel"]["speedup"] == rows["teacher"]["median_s"] / rows["student parallel"]["median_s"]
    assert "x faster than teacher" in format_video_bench(results)


def test_a_clip_that_does_not_fit_the_time_and_space_factors_is_refused(models):
    student, teacher = models
    with pytest.raises(ConfigError, match="1 \\+ 4k"):
        video_bench(frames=6, width=32, height=32, student=student, teacher_model=teacher)


def test_the_command_defaults_to_33_frames_at_512x320_against_wan_2_1():
    args, _ = parse(["bench-video"])
    assert (args.teacher, args.frames, args.width, args.height) == ("wan2.1", 33, 512, 320)


def test_a_chunk_of_no_frames_is_refused(models):
    student, teacher = models
    with pytest.raises(ConfigError, match="--chunk-size must be positive"):
        video_bench(frames=5, width=32, height=32, student=student, teacher_model=teacher, chunk_size=0)
