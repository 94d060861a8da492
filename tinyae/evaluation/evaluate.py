"""How close a student is to its teacher, measured the same way every time.

For each image x, with the teacher's latents z = teacher.encode(x):

    decoder_vs_teacher             student.decode(z)                    vs teacher.decode(z)
    decoder_vs_original            student.decode(z)                    vs x
    encoder_roundtrip_vs_teacher   teacher.decode(student.encode(x))    vs teacher.decode(z)
    encoder_roundtrip_vs_original  teacher.decode(student.encode(x))    vs x
    student_roundtrip_vs_original  student.decode(student.encode(x))    vs x
    teacher_roundtrip_vs_original  teacher.decode(z)                    vs x   (the ceiling)

each with PSNR, SSIM, MS-SSIM and LPIPS (tinyae.metrics), plus the student's
latents against the teacher's (MSE and per-channel R^2) and its fp16/bf16 safety
(tinyae.evaluation.precision: its largest activation, its outputs in each dtype).
Decoded images are clamped to [-1, 1] first, as a pipeline does when it turns them into pictures.
Scores are means over images of per-image values; `per_image` keeps the values.

`evaluate` returns a JSON-ready dict; `write_report` writes eval.json, eval.md
and comparison grids; `summary` flattens it for metrics.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from tinyae.config import MAX_RESOLUTION, MIN_RESOLUTION, check_positive
from tinyae.data.images import BAD_IMAGE_ERRORS, center_crop, load_rgb, scan_images
from tinyae.errors import ConfigError, DataError
from tinyae.evaluation import metrics
from tinyae.evaluation.lpips import load_lpips
from tinyae.evaluation.precision import PRECISION_NOTE, PrecisionStats, format_precision, overflow_warnings
from tinyae.models.latent_space import LatentSpace
from tinyae.models.precision import can_check
from tinyae.utils.atomic import atomic_file
from tinyae.utils.tables import fmt, markdown_table

FORMAT = "tinyae-eval/1"
METRICS = ("psnr", "ssim", "ms_ssim", "lpips", "chroma_diff", "saturation_diff", "colour_error")
# name -> (output, reference, what it means); outputs are the keys of `_outputs`.
COMPARISONS = {
    "decoder_vs_teacher": ("decoder", "teacher", "student.decode(z) vs teacher.decode(z)"),
    "decoder_vs_original": ("decoder", "original", "student.decode(z) vs original"),
    "encoder_roundtrip_vs_teacher": ("encoder_roundtrip", "teacher",
                                     "teacher.decode(student.encode(x)) vs teacher.decode(z)"),
    "encoder_roundtrip_vs_original": ("encoder_roundtrip", "original", "teacher.decode(student.encode(x)) vs original"),
    "student_roundtrip_vs_original": ("student_roundtrip", "original", "student.decode(student.encode(x)) vs original"),
    "teacher_roundtrip_vs_original": ("teacher", "original", "teacher.decode(z) vs original (the reference)"),
}
HEATMAP_MAX = 0.25  # |student - teacher| in [0, 1] units at full colour; fixed so grids compare


def _placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters())
    return param.device, param.dtype


@torch.no_grad()
def teacher_reference(teacher: nn.Module, images: torch.Tensor, batch_size: int = 4) -> dict[str, torch.Tensor]:
    """The teacher's latents and decodes of `images`, to evaluate many students without recomputing them."""
    parts = []
    for chunk in images.split(batch_size):
        z = teacher.encode(chunk.to(_placement(teacher)[0]).float()).float()
        parts.append((z.cpu(), teacher.decode(z).float().cpu()))
    return {"z_teacher": torch.cat([z for z, _ in parts]), "teacher": torch.cat([t for _, t in parts])}


def _outputs(student: nn.Module, teacher: nn.Module, x: torch.Tensor, reference: dict[str, torch.Tensor] | None = None,
             needed: Sequence[str] = tuple(COMPARISONS)) -> dict[str, torch.Tensor]:
    """The images and latents the `needed` comparisons use, for one batch, as float32 on the teacher's device."""
    device, dtype = _placement(student)
    t_device = _placement(teacher)[0]
    wanted = {name for comparison in needed for name in COMPARISONS[comparison][:2]}

    def run_student(fn, inp):
        return fn(inp.to(device, dtype)).float().to(t_device)

    x = x.to(t_device).float()
    z_teacher = reference["z_teacher"].to(t_device) if reference else teacher.encode(x).float()
    z_student = run_student(student.encode, x)
    makers = {
        "original": lambda: x,
        "teacher": lambda: reference["teacher"].to(t_device) if reference else teacher.decode(z_teacher),
        "decoder": lambda: run_student(student.decode, z_teacher),
        "encoder_roundtrip": lambda: teacher.decode(z_student),
        "student_roundtrip": lambda: run_student(student.decode, z_student),
    }
    out = {k: make().float().clamp(-1, 1) for k, make in makers.items() if k in wanted}
    return {**out, "z_teacher": z_teacher, "z_student": z_student}


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _mean(values: list[float]) -> float:
    return float(torch.tensor(values, dtype=torch.float64).mean())


def _count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe_model(model: nn.Module, fallback: str) -> dict:
    """What a report says about a model: its name, layout, latent space and parameter counts."""
    info = {"name": getattr(model, "name", fallback)}
    if dataclasses.is_dataclass(getattr(model, "arch", None)):
        info["arch"] = model.arch.to_dict()
    for key in ("scaling_factor", "shift_factor"):  # the teacher's own (not a diffusers config entry's)
        if (key in vars(model) or isinstance(getattr(type(model), key, None), property)) and isinstance(
                getattr(model, key, None), float):
            info[key] = getattr(model, key)
    if isinstance(getattr(model, "latent_space", None), LatentSpace):
        info["latent_space"] = model.latent_space.describe()
    for part in ("encoder", "decoder"):
        if isinstance(getattr(model, part, None), nn.Module):
            info[f"{part}_params"] = _count_params(getattr(model, part))
    if isinstance(getattr(model, "vae", None), nn.Module):
        vae = model.vae
        info.update(encoder_params=_count_params(vae.encoder), decoder_params=_count_params(vae.decoder))
    return info


@torch.no_grad()
def evaluate_images(student: nn.Module, teacher: nn.Module, images: torch.Tensor, names: Sequence[str] | None = None,
                    batch_size: int = 4, lpips_net: str = "alex", progress: bool = False,
                    reference: dict[str, torch.Tensor] | None = None,
                    comparisons: Sequence[str] = tuple(COMPARISONS), precision: bool = True) -> dict:
    """The metrics of one set of same-size images (N, 3, H, W) in [-1, 1] (`reference`: see teacher_reference),
    and fp16/bf16 safety if `precision`."""
    unknown = sorted(set(comparisons) - set(COMPARISONS))
    if unknown:
        raise ConfigError(f"Unknown comparison '{unknown[0]}'; known: {', '.join(COMPARISONS)}.")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise DataError(f"Evaluation images must be a non-empty (N, 3, H, W) tensor, got {tuple(images.shape)}.")
    check_resolutions(student, teacher, images.shape[-2:])
    if names is not None and len(names) != images.shape[0]:
        raise DataError(f"Got {len(names)} names for {images.shape[0]} evaluation images.")
    per_image = {name: {m: [] for m in METRICS} for name in comparisons}
    latent_mse: list[float] = []
    stats = metrics.LatentStats()
    low_precision = PrecisionStats() if precision and can_check(student) else None
    batches = range(0, images.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"evaluate {images.shape[-1]} px", unit="batch")
    for start in batches:
        window = slice(start, start + batch_size)
        out = _outputs(student, teacher, images[window],
                       {k: v[window] for k, v in reference.items()} if reference else None, comparisons)
        for name in comparisons:
            a, b, _ = COMPARISONS[name]
            for metric, values in metrics.image_metrics(out[a], out[b], lpips_net).items():
                per_image[name][metric] += values.cpu().tolist()
        latent_mse += metrics.latent_mse(out["z_student"], out["z_teacher"]).cpu().tolist()
        stats.update(out["z_student"], out["z_teacher"])
        if low_precision is not None:
            low_precision.update(student, images[start:start + batch_size], out["z_teacher"])
    r2 = stats.r2().tolist()
    return {
        "resolution": [int(images.shape[-2]), int(images.shape[-1])],
        "n_images": int(images.shape[0]),
        "images": list(names) if names is not None else [f"#{i}" for i in range(images.shape[0])],
        "metrics": {name: {m: _mean(v) for m, v in values.items()} for name, values in per_image.items()},
        "latents": {"mse": stats.mse(), "r2": r2, "r2_mean": sum(r2) / len(r2), "teacher_std": stats.std().tolist()},
        "per_image": {**per_image, "latent_mse": latent_mse},
        **({"precision": low_precision.result()} if low_precision is not None else {}),
    }


def evaluate(student: nn.Module, teacher: nn.Module, images: torch.Tensor | Sequence[torch.Tensor],
             names: Sequence[str] | None = None, batch_size: int = 4, lpips_net: str = "alex",
             progress: bool = False, references: Sequence[dict[str, torch.Tensor]] | None = None,
             comparisons: Sequence[str] = tuple(COMPARISONS), precision: bool = True) -> dict:
    """Student vs teacher on images in [-1, 1]: one (N, 3, H, W) tensor, or one per resolution.

    `references` (one per image set, from `teacher_reference`) spare the teacher's own encode/decode
    when many students are evaluated on the same images; `comparisons` picks a subset of COMPARISONS
    (the round trips cost two more decodes per image).

    Returns {"format", "teacher", "student", "lpips_net", "notes", "resolutions": {"256": {...}}};
    each resolution holds "metrics" (comparison -> psnr/ssim/ms_ssim/lpips means), "latents"
    (mse, per-channel r2, r2_mean, teacher_std), "per_image" values in `names` order and, with
    `precision`, "precision" (tinyae.evaluation.precision.PrecisionStats.result).
    """
    if student.latent_channels != teacher.latent_channels:
        raise ConfigError(f"The student has {student.latent_channels} latent channels but the teacher "
                          f"'{teacher.name}' has {teacher.latent_channels}: evaluate a student against its own "
                          "teacher.")
    sets = [images] if isinstance(images, torch.Tensor) else list(images)
    sizes = [x.shape[-1] for x in sets]
    if len(set(sizes)) != len(sizes):
        raise ConfigError(f"Each image set needs its own resolution, got {sizes}.")
    for x in sets:  # every size before any work
        check_resolutions(student, teacher, x.shape[-2:])
    was_training = student.training
    student.eval()
    try:
        refs = list(references) if references is not None else [None] * len(sets)
        runs = {str(x.shape[-1]): evaluate_images(student, teacher, x, names, batch_size, lpips_net, progress, ref,
                                                  comparisons, precision)
                for x, ref in zip(sets, refs)}
    finally:
        student.train(was_training)
    lpips_source = getattr(load_lpips(lpips_net), "tinyae_source", "unknown")
    return {
        "format": FORMAT,
        "teacher": describe_model(teacher, "teacher"),
        "student": describe_model(student, "student"),
        "lpips_net": lpips_net,
        "notes": [
            "Decoded images are clamped to [-1, 1]; PSNR/SSIM/MS-SSIM are computed on [0, 1].",
            metrics.MS_SSIM_NOTE,
            f"LPIPS {lpips_net} with a pretrained trunk from {lpips_source}.",
            "ΔC*ab: mean CIELAB chroma of the output minus the reference's (negative: duller colours); Δsat: the "
            "same for HSV saturation; colour_error (eval.json): |ΔC*ab| per image, averaged.",
            *([PRECISION_NOTE] if precision else []),
        ],
        "comparisons": {name: COMPARISONS[name][2] for name in comparisons},
        "resolutions": runs,
    }


def check_resolutions(student: nn.Module, teacher: nn.Module, sizes: Sequence[int]) -> None:
    """Refuse sizes the models cannot encode (each must be a multiple of both downscale factors)."""
    factors = {"teacher": teacher.downscale, "student": getattr(student, "downscale", teacher.downscale)}
    for size in sizes:
        for who, factor in factors.items():
            if size <= 0 or size % factor:
                raise DataError(f"Evaluation images of {int(size)} px are not a positive multiple of the {who}'s "
                                f"downscale factor {factor}; choose a resolution divisible by it.")


def check_eval_arguments(resolutions: Sequence[int], limit: int | None = None, batch_size: int = 4) -> None:
    """Refuse, before anything loads, counts below 1 and sizes LPIPS or the memory cannot take."""
    check_positive("--batch-size", batch_size)
    check_positive("--limit", limit)
    for size in resolutions:
        if size < MIN_RESOLUTION:
            raise DataError(f"Evaluation images of {size} px are below the {MIN_RESOLUTION} px LPIPS needs; choose "
                            f"--resolution {MIN_RESOLUTION} or more.")
        if size > MAX_RESOLUTION:
            raise DataError(f"Evaluation images of {size} px are above {MAX_RESOLUTION} px, more than tinyae "
                            "evaluates in memory; choose a smaller --resolution.")


def evaluate_folder(student: nn.Module, teacher: nn.Module, data: str | Path, resolutions: Sequence[int] = (256,),
                    limit: int | None = None, batch_size: int = 4, lpips_net: str = "alex",
                    progress: bool = True) -> tuple[dict, list[torch.Tensor]]:
    """Evaluate on the centre crops of a folder's images at each resolution; returns (results, image sets).

    Every resolution is checked before an image is read. Files that cannot be read (also
    truncated ones) are skipped with a warning and listed in results["unreadable_images"].
    """
    check_eval_arguments(resolutions, limit, batch_size)
    check_resolutions(student, teacher, resolutions)
    files, bad = scan_images(data, max(resolutions))
    files = files[:limit] if limit else files
    crops: dict[int, list[torch.Tensor]] = {r: [] for r in resolutions}
    names, unreadable = [], [p.name for p in bad]
    for path in files:
        try:
            image = load_rgb(path)  # decoded once, cropped at every resolution
        except BAD_IMAGE_ERRORS as exc:
            warnings.warn(f"Skipping unreadable image {path}: {exc}", stacklevel=2)
            unreadable.append(path.name)
            continue
        for r in resolutions:
            crops[r].append(center_crop(image, r))
        names.append(path.name)
    if not names:
        raise DataError(f"None of the images under '{data}' could be read.")
    sets = [torch.stack(crops[r]) for r in resolutions]
    results = evaluate(student, teacher, sets, names, batch_size, lpips_net, progress)
    results["unreadable_images"] = sorted(unreadable)
    return results, sets


def _largest(results: dict) -> dict:
    return results["resolutions"][max(results["resolutions"], key=int)]


def summary(results: dict, resolution: int | None = None) -> dict:
    """Flat numbers for metrics.json and loggers, at `resolution` (default: the largest evaluated).

    Keys: resolution, n_images, {METRICS}_vs_teacher (decoder), {psnr,lpips,chroma_diff,saturation_diff,
    colour_error}_vs_original (decoder), roundtrip_{psnr,lpips}_vs_teacher (student encoder through the teacher
    decoder), teacher_psnr_vs_original, latent_mse, latent_r2, and with the precision check max_activation,
    fp16_overflow (bool), {fp16,bf16}_psnr_vs_fp32 (decoder). Undefined values (NaN, inf) and comparisons
    that were not evaluated are None.
    """
    if resolution is not None and str(resolution) not in results["resolutions"]:
        raise ConfigError(f"No evaluation at {resolution} px; evaluated: {', '.join(results['resolutions'])}.")
    run = results["resolutions"][str(resolution)] if resolution else _largest(results)
    m = run["metrics"]
    flat = {
        "resolution": run["resolution"][-1],
        "n_images": run["n_images"],
        **{f"{k}_vs_teacher": m["decoder_vs_teacher"][k] for k in METRICS},
        "psnr_vs_original": m["decoder_vs_original"]["psnr"],
        "lpips_vs_original": m["decoder_vs_original"]["lpips"],
        "chroma_diff_vs_original": m["decoder_vs_original"]["chroma_diff"],
        "saturation_diff_vs_original": m["decoder_vs_original"]["saturation_diff"],
        "colour_error_vs_original": m["decoder_vs_original"]["colour_error"],
        "roundtrip_psnr_vs_teacher": m.get("encoder_roundtrip_vs_teacher", {}).get("psnr"),
        "roundtrip_lpips_vs_teacher": m.get("encoder_roundtrip_vs_teacher", {}).get("lpips"),
        "teacher_psnr_vs_original": m.get("teacher_roundtrip_vs_original", {}).get("psnr"),
        "latent_mse": run["latents"]["mse"],
        "latent_r2": run["latents"]["r2_mean"],
    }
    if "precision" in run:
        p = run["precision"]
        flat |= {"max_activation": max(p[part]["max_abs_activation"] for part in ("encoder", "decoder")),
                 "fp16_overflow": p["fp16_overflow"] is not None,
                 **{f"{d}_psnr_vs_fp32": p["decoder"][d]["psnr_vs_fp32"] for d in ("fp16", "bf16") if d in p["decoder"]}}
    return {k: (_finite_or_none(v) if isinstance(v, float) else v) for k, v in flat.items()}


# ---------------------------------------------------------------- report


def format_table(results: dict) -> str:
    """Image metrics per comparison and resolution, then latent metrics: the terminal and eval.md tables."""
    rows, latent_rows = [], []
    for res, run in sorted(results["resolutions"].items(), key=lambda kv: int(kv[0])):
        for name, m in run["metrics"].items():
            rows.append([name, res, fmt(m["psnr"], ".2f"), fmt(m["ssim"], ".4f"), fmt(m["ms_ssim"], ".4f"),
                         fmt(m["lpips"], ".4f"), fmt(m["chroma_diff"], "+.2f"), fmt(m["saturation_diff"], "+.3f")])
        lat = run["latents"]
        latent_rows.append([res, fmt(lat["mse"], ".5f"), " ".join(fmt(v, ".3f") for v in lat["r2"]),
                            fmt(lat["r2_mean"], ".4f")])
    images = markdown_table(["comparison", "px", "PSNR ↑", "SSIM ↑", "MS-SSIM ↑", "LPIPS ↓", "ΔC*ab", "Δsat"],
                            rows)
    latents = markdown_table(["px", "latent MSE ↓", "R² per channel ↑", "R² mean ↑"], latent_rows)
    precision = format_precision(results)
    return f"{images}\n\n{latents}" + (f"\n\n{precision}" if precision else "")


def json_safe(obj):
    """NaN and infinities as None, so the JSON is standard."""
    if isinstance(obj, float):
        return _finite_or_none(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _hwc(x: torch.Tensor):
    """(3, H, W) in [-1, 1] -> (H, W, 3) numpy in [0, 1], for imshow."""
    return x.add(1).div(2).permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def comparison_grid(student: nn.Module, teacher: nn.Module, images: torch.Tensor, path: str | Path,
                    names: Sequence[str] | None = None) -> Path:
    """PNG with one row per image: original | teacher | student | |student - teacher| heat map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    was_training = student.training
    student.eval()
    try:
        out = _outputs(student, teacher, images)
    finally:
        student.train(was_training)
    psnr, lpips = metrics.psnr(out["decoder"], out["teacher"]), metrics.lpips(out["decoder"], out["teacher"])
    n = images.shape[0]
    fig, axes = plt.subplots(n, 4, figsize=(4 * 2.6 + 0.8, n * 2.6 + 0.4), squeeze=False, constrained_layout=True)
    heat = None
    for i in range(n):
        diff = (out["decoder"][i] - out["teacher"][i]).abs().div(2).mean(0).cpu().numpy()
        label = names[i] if names else f"#{i}"
        cells = [(_hwc(out["original"][i]), f"original {label}"), (_hwc(out["teacher"][i]), "teacher"),
                 (_hwc(out["decoder"][i]), f"student  {psnr[i]:.1f} dB, LPIPS {lpips[i]:.3f}"),
                 (diff, "|student - teacher|")]
        for ax, (img, title) in zip(axes[i], cells):
            if img.ndim == 2:
                heat = ax.imshow(img, cmap="inferno", vmin=0, vmax=HEATMAP_MAX)
            else:
                ax.imshow(img)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.colorbar(heat, ax=axes[:, 3].tolist(), shrink=0.8, label="mean abs difference ([0, 1] units)")
    path = Path(path)
    atomic_file(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path


def write_report(results: dict, out_dir: str | Path, student: nn.Module | None = None,
                 teacher: nn.Module | None = None, images: torch.Tensor | Sequence[torch.Tensor] | None = None,
                 grid_images: int = 4) -> dict[str, Path]:
    """Write eval.json, eval.md and, given the models and images, grid_<px>.png per resolution.

    Files are replaced atomically, so `out_dir` may be a run folder that holds other files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if images is not None and student is not None and teacher is not None:
        sets = [images] if isinstance(images, torch.Tensor) else list(images)
        for x in sets:
            res = str(x.shape[-1])
            names = results["resolutions"].get(res, {}).get("images")
            path = out_dir / f"grid_{res}px.png"
            written[f"grid_{res}"] = comparison_grid(student, teacher, x[:grid_images], path,
                                                     names[:grid_images] if names else None)
    written["json"] = out_dir / "eval.json"
    text = json.dumps(json_safe(results), indent=2, allow_nan=False) + "\n"
    atomic_file(written["json"], lambda tmp: Path(tmp).write_text(text))
    written["md"] = out_dir / "eval.md"
    md = _markdown(results, [p for k, p in written.items() if k.startswith("grid_")])
    atomic_file(written["md"], lambda tmp: Path(tmp).write_text(md))
    return written


def _markdown(results: dict, grids: list[Path]) -> str:
    t, s = results["teacher"], results["student"]
    n = {run["n_images"] for run in results["resolutions"].values()}

    def params(info: dict) -> str:
        return " + ".join(f"{info[k]:,}" for k in ("encoder_params", "decoder_params") if k in info)

    lines = [
        f"# Evaluation: student vs teacher `{t['name']}`",
        "",
        f"Parameters (encoder + decoder): student {params(s) or '?'}, teacher {params(t) or '?'}. "
        f"{', '.join(map(str, sorted(n)))} images, centre crops.",
        "",
        "z = teacher.encode(x). Means over images; per-image values are in eval.json.",
        "",
        "| comparison | what is compared |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in results["comparisons"].items()],
        "",
        format_table(results),
        "",
        *[f"**Warning: {w}**\n" for w in overflow_warnings(results)],
        *[f"- {note}" for note in results["notes"]],
        "",
        *[f"![{p.stem}]({p.name})" for p in grids],
    ]
    return "\n".join(lines).rstrip() + "\n"
