"""Video decode speed, peak memory and MACs: a TAEHV-layout student against a full video VAE, in one run.

The student decodes the clip's latents in parallel (every frame through each layer at once),
in parallel by chunks (at most `chunk_size` frames through a layer at once, the same frames in
bounded memory) and streaming (one latent in, frames out as soon as they are ready); the
teacher decodes the same latents with diffusers' own decode (Wan's is causal, chunk by chunk).
Weights do not change speed, so both are built from their architectures with random weights
(the teacher from its preset: the full-size VAE). Timing and peak memory use
tinyae.evaluation.bench's `measure` (median of turns taken in alternation, peak memory of
the first call); MACs come from a run on the meta device (tinyae.evaluation.macs).
"""

from __future__ import annotations

import platform
from collections.abc import Callable

import torch

from tinyae.config import MAX_FRAMES, MAX_RESOLUTION, check_range
from tinyae.errors import ConfigError
from tinyae.evaluation.bench import measure
from tinyae.evaluation.macs import count_macs, meta_copy
from tinyae.models.video_student import VideoStudent, video_model
from tinyae.models.video_teacher import VideoTeacher, build_video_teacher
from tinyae.utils.tables import markdown_table


def _macs(fn: Callable[[torch.nn.Module, torch.Tensor], object], model: torch.nn.Module, z: torch.Tensor
          ) -> int | None:
    try:
        return count_macs(lambda x: fn(meta_copy(model), x), torch.empty(z.shape, device="meta"))
    except (RuntimeError, NotImplementedError, TypeError):
        return None  # a model whose decode reads data on the meta device cannot be counted this way


MAX_VIDEO_PIXELS = 129 * 1280 * 1280  # frames x width x height: Wan's longest clips at 720p fit below it


def check_video_shape(frames: int, width: int, height: int, chunk_size: int = 1) -> None:
    """Refuse, before a model is built, a clip no machine decodes (or an empty one): the full VAE's activations are
    about a hundred times the clip, so a bound on the clip is a bound on the memory asked for."""
    check_range("--frames", frames, high=MAX_FRAMES)
    check_range("--width", width, high=MAX_RESOLUTION)
    check_range("--height", height, high=MAX_RESOLUTION)
    check_range("--chunk-size", chunk_size, high=MAX_FRAMES)
    if frames * width * height > MAX_VIDEO_PIXELS:
        raise ConfigError(f"A clip of {frames} frames at {width}x{height} is {frames * width * height / 1e6:.0f}M "
                          f"pixels, more than the {MAX_VIDEO_PIXELS / 1e6:.0f}M tinyae benchmarks (about 129 frames "
                          "at 1280x1280); choose fewer frames or smaller sides.")


def video_bench(teacher: str = "wan2.1", frames: int = 33, width: int = 512, height: int = 320, repeats: int = 1,
                warmup: int = 1, student: VideoStudent | None = None, teacher_model: VideoTeacher | None = None,
                chunk_size: int = 1) -> dict:
    """Decode time, peak memory and MACs for a clip of `frames` frames at width x height."""
    check_video_shape(frames, width, height, chunk_size)
    teacher_model = teacher_model or build_video_teacher(teacher)
    student = (student or VideoStudent.published(teacher_model.taehv_model)).eval()
    arch = student.arch
    if (frames - 1) % arch.time_downscale or width % arch.downscale or height % arch.downscale:
        raise ConfigError(f"A clip of {frames} frames at {width}x{height} does not fit the student's factors: frames "
                          f"must be 1 + {arch.time_downscale}k and sides multiples of {arch.downscale}.")
    if chunk_size < 1:
        raise ConfigError(f"--chunk-size must be positive, got {chunk_size}.")
    z = torch.randn(1, arch.latent_channels, arch.latent_frames(frames), height // arch.downscale,
                    width // arch.downscale, generator=torch.Generator().manual_seed(0))
    chunked = f"student parallel, chunks of {chunk_size}"
    fns = {
        "student parallel": lambda: student.decode(z).sample,
        chunked: lambda: student.decode(z, chunk_size=chunk_size).sample,
        "student streaming": lambda: [frame for frame in student.decode_frames(z)][-1],
        "teacher": lambda: teacher_model.decode(z),
    }
    default_chunk = student.decode_chunk_size
    student.disable_chunking()  # the first row is the unchunked parallel decode, whatever the student's default
    try:
        timings = measure(fns, torch.device("cpu"), repeats, warmup)
        macs = {"student parallel": _macs(lambda m, x: m.decode(x), student, z),
                chunked: _macs(lambda m, x: m.decode(x, chunk_size=chunk_size), student, z),
                "student streaming": _macs(lambda m, x: list(m.decode_frames(x)), student, z),
                "teacher": _macs(lambda m, x: m.decode(x), teacher_model.vae, z)}
    finally:
        student.decode_chunk_size = default_chunk
    rows = [dict(model=name, median_s=t["median_s"], peak_mem_mb=t["peak_mem_mb"], macs=macs[name],
                 memory_method=t["memory_method"]) for name, t in timings.items()]
    teacher_row = rows[-1]
    for row in rows[:-1]:
        row["speedup"] = teacher_row["median_s"] / row["median_s"] if row["median_s"] else None
        row["memory_fraction"] = (row["peak_mem_mb"] / teacher_row["peak_mem_mb"]
                                  if teacher_row["peak_mem_mb"] else None)
    return dict(teacher=teacher_model.name, student=video_model(teacher_model.taehv_model).note,
                frames=frames, width=width, height=height, latents=tuple(z.shape), chunk_size=chunk_size,
                threads=torch.get_num_threads(),
                repeats=repeats, cpu=platform.processor() or platform.machine(), rows=rows)


def format_video_bench(results: dict) -> str:
    def num(value, pattern):
        return "-" if value is None else pattern.format(value)

    head = (f"Decode of {results['frames']} frames at {results['width']}x{results['height']} (latents "
            f"{results['latents']}), {results['threads']} thread(s), median of {results['repeats']}; "
            f"teacher: {results['teacher']}, student: TAEHV layout for {results['student']} (random weights: speed does not "
            "depend on them)")
    table = markdown_table(
        ["model", "s", "peak memory growth MB", "GMACs", "x faster than teacher", "memory / teacher's"],
        [[r["model"], num(r["median_s"], "{:.2f}"), num(r["peak_mem_mb"], "{:.0f}"),
          num(r["macs"] and r["macs"] / 1e9, "{:.0f}"), num(r.get("speedup"), "{:.1f}"),
          num(r.get("memory_fraction"), "{:.3f}")] for r in results["rows"]])
    return f"{head}\n\n{table}"
