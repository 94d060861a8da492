"""How close a video student is to its video teacher, and how much faster it decodes.

For each clip x, (3, F, H, W) in [-1, 1] with F = 1 + 4k (1 + 8k for LTX), and the teacher's
latents z = teacher.encode(x):

    decoder_vs_teacher             student.decode(z)                   vs teacher.decode(z)
    decoder_vs_original            student.decode(z)                   vs x
    student_roundtrip_vs_original  student.decode(student.encode(x))   vs x
    teacher_roundtrip_vs_original  teacher.decode(z)                   vs x   (the ceiling)

each with per-frame PSNR, SSIM and LPIPS averaged per clip, flicker and temporal PSNR
(tinyae.evaluation.video_metrics, so the numbers compare with the image students'); the
decoder_vs_teacher flicker is the student's wobble where the teacher has none. The student's
latents are compared with z as for images (MSE and per-channel R², frames counted as positions).
Decoded clips are clamped to [-1, 1] first, as a pipeline does.

Speed: the wall seconds of the decodes of z done here (student parallel, student streaming
frame by frame, teacher), summed over batches, and the teacher's over each student's. They come
for free with the numbers, on real clips, but share the machine with whatever else runs;
`tinyae bench-video` is the controlled benchmark (medians, peak memory, MACs).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from tinyae.config import MAX_RESOLUTION, MIN_RESOLUTION, check_positive
from tinyae.errors import ConfigError, DataError
from tinyae.evaluation import metrics
from tinyae.evaluation.evaluate import COMPARISONS, describe_model, json_safe
from tinyae.evaluation.lpips import load_lpips
from tinyae.evaluation.video_metrics import video_metrics
from tinyae.models.video_student import VideoStudent
from tinyae.models.video_teacher import VideoTeacher
from tinyae.utils.atomic import atomic_file
from tinyae.utils.tables import fmt, markdown_table
from tinyae.utils.weights import refuse_non_finite

FORMAT = "tinyae-video-eval/1"
VIDEO_COMPARISONS = {name: COMPARISONS[name] for name in ("decoder_vs_teacher", "decoder_vs_original",
                                                           "student_roundtrip_vs_original",
                                                           "teacher_roundtrip_vs_original")}
DECODERS = ("student_parallel", "student_streaming", "teacher")


def _frames(z: Tensor) -> Tensor:
    """(B, C, T, h, w) -> (B * T, C, h, w): every latent frame a sample, for the image latent metrics."""
    return z.transpose(1, 2).flatten(0, 1)


def _timed(seconds: dict[str, float], name: str, device: torch.device, fn: Callable[[], object]) -> object:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds[name] += time.perf_counter() - start
    return out


def check_clip_shape(student: VideoStudent, frames: int, height: int, width: int) -> None:
    """Refuse clip shapes the student cannot take (F = 1 + 4k, sides multiples of its factor) or LPIPS cannot
    measure; cheap, so callers check before loading a teacher or reading videos."""
    arch = student.arch
    if frames < 1 or (frames - 1) % arch.time_downscale:
        k = max(1, frames // arch.time_downscale)
        raise DataError(f"Clips of {frames} frames do not fit the student's time factor: use 1 + "
                        f"{arch.time_downscale}k frames (e.g. {1 + arch.time_downscale * k}).")
    if height % arch.downscale or width % arch.downscale:
        raise DataError(f"Clips of {width}x{height} px are not multiples of the student's downscale factor "
                        f"{arch.downscale}; choose sides divisible by it.")
    if min(height, width) < MIN_RESOLUTION or max(height, width) > MAX_RESOLUTION:
        raise DataError(f"Clips of {width}x{height} px are outside the {MIN_RESOLUTION}-{MAX_RESOLUTION} px tinyae "
                        f"evaluates (LPIPS needs {MIN_RESOLUTION}); choose another --resolution.")


def check_clips(student: VideoStudent, teacher: VideoTeacher, clips: Tensor) -> None:
    """Refuse clips the models cannot take, and a teacher of another latent space."""
    if clips.ndim != 5 or clips.shape[1] != 3 or clips.shape[0] == 0:
        raise DataError(f"Evaluation clips must be a non-empty (N, 3, F, H, W) tensor, got {tuple(clips.shape)}.")
    check_clip_shape(student, clips.shape[2], *clips.shape[-2:])
    if student.arch.latent_channels != teacher.latent_channels:
        raise ConfigError(f"The student has {student.arch.latent_channels} latent channels but the teacher "
                          f"'{teacher.name}' has {teacher.latent_channels}: evaluate a student against its own "
                          "teacher.")


@torch.no_grad()
def _against_reference(student: VideoStudent, reference: VideoTeacher | None, z: Tensor) -> dict | None:
    """Decode seconds of the full-size VAE and of the student on the same latents `z` (on the student's device)."""
    if reference is None:
        return None
    device = z.device
    seconds = dict.fromkeys(("reference", "student_parallel", "student_streaming"), 0.0)
    _timed(seconds, "reference", device, lambda: reference.to(device).decode(z.to(next(reference.parameters()).dtype)))
    _timed(seconds, "student_parallel", device, lambda: student.decode(z).sample)
    _timed(seconds, "student_streaming", device, lambda: sum(1 for _ in student.decode_frames(z)))
    return {"model": describe_model(reference, "reference VAE"), "seconds": seconds["reference"],
            "student_parallel_seconds": seconds["student_parallel"],
            "student_streaming_seconds": seconds["student_streaming"],
            "speedup_parallel": seconds["reference"] / seconds["student_parallel"],
            "speedup_streaming": seconds["reference"] / seconds["student_streaming"]}


@torch.no_grad()
def evaluate_video(student: VideoStudent, teacher: VideoTeacher, clips: Tensor, with_lpips: bool = True,
                   batch_size: int = 1, lpips_net: str = "alex", names: Sequence[str] | None = None,
                   reference: VideoTeacher | None = None) -> dict:
    """Student vs teacher on clips (N, 3, F, H, W) in [-1, 1], F = 1 + 4k; a JSON-ready dict.

    Keys: format, teacher, student (descriptions), lpips_net (None without LPIPS), n_clips, frames,
    resolution [H, W], latent_shape [C, T, h, w], clips (names), comparisons (name -> what is compared),
    metrics (comparison -> psnr, ssim, lpips, flicker, temporal_psnr: means over clips), latents (mse, r2 per
    channel, r2_mean, teacher_std), decode_seconds (student_parallel, student_streaming, teacher),
    decode_chunk_size (the student's, which its parallel decode used; None: unchunked), speedup
    (student_parallel, student_streaming: the teacher's seconds over the student's), per_clip (comparison ->
    metric -> values, and latent_mse), reference and notes.

    A small teacher stands in for a full-size VAE (tiny-wan for Wan 2.1), and a student is only fast next to the
    VAE it replaces: `reference` (that VAE's architecture, e.g. `build_video_teacher("wan2.1")`) decodes the first
    batch's latents, timed against the student on the same latents (reference: model, seconds,
    student_parallel_seconds, student_streaming_seconds, speedup_parallel, speedup_streaming; None without one).
    """
    refuse_non_finite(student.state_dict(), "The video student", "evaluate a checkpoint from before its training "
                      "diverged")  # its metrics would read "n/a" and its temporal PSNR "inf"
    check_clips(student, teacher, clips)
    check_positive("batch_size", batch_size)
    if names is not None and len(names) != clips.shape[0]:
        raise DataError(f"Got {len(names)} names for {clips.shape[0]} evaluation clips.")
    s_device, s_dtype = next(student.parameters()).device, next(student.parameters()).dtype
    t_device = next(teacher.parameters()).device
    seconds = dict.fromkeys(DECODERS, 0.0)
    per_clip = {name: {} for name in VIDEO_COMPARISONS}
    latent_mse: list[float] = []
    stats = metrics.LatentStats()
    first_latents = None
    was_training = student.training
    student.eval()
    try:
        for x in clips.split(batch_size):
            x = x.to(t_device).float()
            z = teacher.encode(x)
            zs = z.to(s_device, s_dtype)
            first_latents = zs if first_latents is None else first_latents  # the reference decodes these
            out = {"original": x,
                   "teacher": _timed(seconds, "teacher", t_device, lambda: teacher.decode(z)),
                   "decoder": _timed(seconds, "student_parallel", s_device, lambda: student.decode(zs).sample)}
            # streaming: frames are dropped as they come, as a player would show them (bounded memory)
            _timed(seconds, "student_streaming", s_device, lambda: sum(1 for _ in student.decode_frames(zs)))
            z_student = student.encode(x.to(s_device, s_dtype)).latents
            out["student_roundtrip"] = student.decode(z_student).sample
            out = {k: v.float().to(t_device).clamp(-1, 1) for k, v in out.items()}
            if out["decoder"].shape != x.shape or out["teacher"].shape != x.shape:
                raise DataError(f"Clips of shape {tuple(x.shape[1:])} decode to {tuple(out['decoder'].shape[1:])} "
                                f"(student) and {tuple(out['teacher'].shape[1:])} (teacher): the two do not share "
                                "time and space factors; evaluate a student against its own teacher.")
            for name, (a, b, _) in VIDEO_COMPARISONS.items():
                for metric, values in video_metrics(out[a], out[b], with_lpips, lpips_net).items():
                    per_clip[name].setdefault(metric, []).extend(values.cpu().tolist())
            z_student = z_student.float().to(t_device)
            if z_student.shape != z.shape:
                raise DataError(f"The student encodes these clips to latents {tuple(z_student.shape)} but the "
                                f"teacher to {tuple(z.shape)}; evaluate a student against its own teacher.")
            stats.update(_frames(z_student), _frames(z))
            latent_mse += metrics.latent_mse(_frames(z_student), _frames(z)).view(z.shape[0], -1).mean(1).tolist()
        against = _against_reference(student, reference, first_latents)
    finally:
        student.train(was_training)
    r2 = stats.r2().tolist()
    lpips_source = getattr(load_lpips(lpips_net), "tinyae_source", "unknown") if with_lpips else None
    return {
        "format": FORMAT,
        "teacher": describe_model(teacher, "teacher"),
        "student": describe_model(student, f"video student ({student.taehv_name or 'TAEHV layout'})"),
        "lpips_net": lpips_net if with_lpips else None,
        "n_clips": int(clips.shape[0]),
        "frames": int(clips.shape[2]),
        "resolution": [int(clips.shape[-2]), int(clips.shape[-1])],
        "latent_shape": list(z.shape[1:]),
        "clips": list(names) if names is not None else [f"#{i}" for i in range(clips.shape[0])],
        "comparisons": {name: description for name, (_, _, description) in VIDEO_COMPARISONS.items()},
        "metrics": {name: {m: _mean(v) for m, v in values.items()} for name, values in per_clip.items()},
        "latents": {"mse": stats.mse(), "r2": r2, "r2_mean": sum(r2) / len(r2), "teacher_std": stats.std().tolist()},
        "decode_seconds": seconds,
        "decode_chunk_size": student.decode_chunk_size,  # None: all frames through each layer at once
        "speedup": {name: seconds["teacher"] / seconds[name] if seconds[name] else None for name in DECODERS[:2]},
        "per_clip": {**per_clip, "latent_mse": latent_mse},
        "reference": against,
        "notes": [
            "Per-frame metrics (PSNR, SSIM, LPIPS on [0, 1] frames) are averaged over each clip's frames, then over "
            "clips; decoded clips are clamped to [-1, 1].",
            "flicker: mean |(a[t+1] - a[t]) - (b[t+1] - b[t])| in [0, 1] units (0: the frames change as the "
            "reference's do); temporal_psnr: the same in dB.",
            *([f"LPIPS {lpips_net} with a pretrained trunk from {lpips_source}."] if with_lpips else []),
            f"Decode seconds: the wall time of this evaluation's decodes of the teacher's latents, summed over "
            f"{-(-clips.shape[0] // batch_size)} batch(es) of {batch_size}, on a machine that may be busy; "
            "`tinyae bench-video` is the controlled benchmark.",
        ],
    }


def _mean(values: list[float]) -> float:
    return float(torch.tensor(values, dtype=torch.float64).mean())


def video_summary(results: dict) -> dict:
    """Flat numbers for metrics.json and loggers, as tinyae.evaluation.evaluate.summary for images.

    Keys: n_clips, frames, resolution, {psnr,ssim,lpips,flicker,temporal_psnr}_vs_teacher (decoder),
    {psnr,ssim,lpips}_vs_original (decoder), roundtrip_{psnr,lpips}_vs_original (student round trip),
    teacher_psnr_vs_original, latent_mse, latent_r2, decode_s_{student_parallel,student_streaming,teacher},
    speedup_{parallel,streaming}; with a reference VAE also reference_vae, decode_s_reference and
    speedup_vs_reference_{parallel,streaming}. Undefined values (NaN, inf, no LPIPS) are None.
    """
    m = results["metrics"]
    vs_teacher, vs_original = m["decoder_vs_teacher"], m["decoder_vs_original"]
    flat = {
        "n_clips": results["n_clips"], "frames": results["frames"], "resolution": results["resolution"],
        **{f"{k}_vs_teacher": vs_teacher.get(k) for k in ("psnr", "ssim", "lpips", "flicker", "temporal_psnr")},
        **{f"{k}_vs_original": vs_original.get(k) for k in ("psnr", "ssim", "lpips")},
        "roundtrip_psnr_vs_original": m["student_roundtrip_vs_original"]["psnr"],
        "roundtrip_lpips_vs_original": m["student_roundtrip_vs_original"].get("lpips"),
        "teacher_psnr_vs_original": m["teacher_roundtrip_vs_original"]["psnr"],
        "latent_mse": results["latents"]["mse"],
        "latent_r2": results["latents"]["r2_mean"],
        **{f"decode_s_{k}": v for k, v in results["decode_seconds"].items()},
        "speedup_parallel": results["speedup"]["student_parallel"],
        "speedup_streaming": results["speedup"]["student_streaming"],
    }
    if results.get("reference"):
        ref = results["reference"]
        flat |= {"reference_vae": ref["model"]["name"], "decode_s_reference": ref["seconds"],
                 "speedup_vs_reference_parallel": ref["speedup_parallel"],
                 "speedup_vs_reference_streaming": ref["speedup_streaming"]}
    return json_safe(flat)


# ---------------------------------------------------------------- clips and report


def load_clips(dataset: Dataset, limit: int | None = None) -> tuple[Tensor, list[str]]:
    """The first `limit` clips of a VideoFolder / PhotoClips as one (N, 3, F, H, W) tensor, with their names."""
    check_positive("--limit", limit)
    count = min(len(dataset), limit) if limit else len(dataset)
    if count == 0:
        raise DataError("There are no clips to evaluate.")
    files = getattr(dataset, "files", None)
    per_file = max(1, len(dataset) // len(files)) if files else 1
    names = [f"{files[i // per_file].name}" if files else f"#{i}" for i in range(count)]
    return torch.stack([dataset[i] for i in range(count)]), names


def format_video_table(results: dict) -> str:
    """The terminal and eval.md tables: per-frame metrics and flicker per comparison, latents, decode speed."""
    rows = [[name, fmt(m["psnr"], ".2f"), fmt(m["ssim"], ".4f"), fmt(m.get("lpips"), ".4f"),
             fmt(m["flicker"], ".5f"), fmt(m["temporal_psnr"], ".2f")] for name, m in results["metrics"].items()]
    quality = markdown_table(["comparison", "PSNR ↑", "SSIM ↑", "LPIPS ↓", "flicker ↓", "temporal PSNR ↑"], rows)
    lat = results["latents"]
    latents = markdown_table(["latent MSE ↓", "R² per channel ↑", "R² mean ↑"],
                             [[fmt(lat["mse"], ".5f"), " ".join(fmt(v, ".3f") for v in lat["r2"]),
                               fmt(lat["r2_mean"], ".4f")]])
    speed = markdown_table(["decode", "s", "x faster than teacher"],
                           [[name.replace("_", " "), fmt(results["decode_seconds"][name], ".2f"),
                             fmt(results["speedup"].get(name), ".1f")] for name in DECODERS])
    ref = results.get("reference")
    if ref:
        speed += "\n\n" + markdown_table(
            ["decode, first batch", "s", "x faster than the reference"],
            [[ref["model"]["name"], fmt(ref["seconds"], ".2f"), ""],
             ["student parallel", fmt(ref["student_parallel_seconds"], ".2f"), fmt(ref["speedup_parallel"], ".1f")],
             ["student streaming", fmt(ref["student_streaming_seconds"], ".2f"), fmt(ref["speedup_streaming"], ".1f")]])
    return f"{quality}\n\n{latents}\n\n{speed}"


def write_video_report(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write eval.json and eval.md (replaced atomically, so `out_dir` may hold other files)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"json": out_dir / "eval.json", "md": out_dir / "eval.md"}
    text = json.dumps(json_safe(results), indent=2, allow_nan=False) + "\n"
    atomic_file(written["json"], lambda tmp: Path(tmp).write_text(text))
    h, w = results["resolution"]
    md = "\n".join([
        f"# Video evaluation: student vs teacher `{results['teacher']['name']}`",
        "",
        f"{results['n_clips']} clips of {results['frames']} frames at {w}x{h} (latents {results['latent_shape']})"
        + (f", {results['clip_source']}" if results.get("clip_source") else "") + ". "
        "z = teacher.encode(x). Means over clips; per-clip values are in eval.json.",
        "",
        "| comparison | what is compared |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in results["comparisons"].items()],
        "",
        format_video_table(results),
        "",
        *[f"- {note}" for note in results["notes"]],
    ]) + "\n"
    atomic_file(written["md"], lambda tmp: Path(tmp).write_text(md))
    return written
