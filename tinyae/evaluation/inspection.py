"""Look at a VAE's latent space before distilling it.

A student learns the latents the diffusion model sees, so before distilling a
new VAE we want four measurements over real images:

- which scaling/shift factors make its latents unit-variance (the
  latent-diffusion paper's 1/std rule), with a bootstrap interval over images;
- whether its posterior variance means anything at the precision we train in;
- whether some latent positions are outliers in every image (the SD VAE's
  log-variance "holes") rather than carriers of image content;
- whether editing one latent position changes only the pixels around it, and
  whether the reconstruction changes when the outliers are replaced.

The factors come from `tinyae.evaluation.factors` (the estimator training uses too);
`inspect_vae` runs everything and writes report.md, report.json and PNG figures.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tinyae.config import TeacherConfig
from tinyae.data.images import list_images, load_eval_images, sample_photos
from tinyae.errors import DataError, ExportError
from tinyae.evaluation import metrics
from tinyae.evaluation.factors import FactorEstimate, as_teacher, encode_raw, factors_from_latents
from tinyae.models.teacher import Teacher, build_teacher, load_teacher
from tinyae.utils.atomic import EXISTS, atomic_folder, check_writable
from tinyae.utils.tables import fmt

# Unit roundoff (half the relative spacing) of the formats students train in.
UNIT_ROUNDOFF = {"fp16": 2.0**-11, "bf16": 2.0**-8}
LOGVAR_CLAMP = -30.0  # diffusers' DiagonalGaussianDistribution clamps logvar to [-30, 20]
# Lower edges (pixels from the edited cell's footprint) of the bands of the radial change profile.
DISTANCE_BANDS = (0, 1, 8, 16, 32, 64, 128)


# ---------------------------------------------------------------- latents


def raw_decoder(teacher: Teacher) -> Callable[[torch.Tensor], torch.Tensor]:
    """Raw latents -> float32 images in [-1, 1] on the CPU."""

    @torch.no_grad()
    def decode(raw: torch.Tensor) -> torch.Tensor:
        return teacher.decode_raw(raw).cpu()

    return decode


def latent_space_stats(teacher: Teacher, mean: torch.Tensor, factors: FactorEstimate, num_bootstrap: int = 4000,
                       seed: int = 0) -> dict:
    """The family's latent space as configured, and the same convention fitted to these images.

    Per-channel families (Qwen-Image: latents_mean/std; FLUX.2: batch-norm statistics of the
    2x2-patchified channels) get per-channel estimates with intervals next to the configured
    values; scalar families get the scalar factors, which the "factors" section details.
    """
    space = teacher.latent_space
    view = space.stats_view(mean)
    est = factors if view is mean else factors_from_latents(view, num_bootstrap, seed=seed)
    fitted = space.fitted(est)
    z = space.from_raw(mean)
    section = {"kind": space.kind, "describe": space.describe(), "configured": space.to_dict(),
               "recommended": fitted.to_dict(),
               "in_space": {"mean": float(z.mean()), "std": float(z.std()),
                            "per_channel_std": z.transpose(0, 1).flatten(1).std(1).tolist()}}
    if space.kind in ("per-channel", "patch-norm"):
        configured_std = (torch.tensor(space.std) if space.kind == "per-channel" else
                          (torch.tensor(space.var) + space.eps).sqrt()).tolist()
        section["channels"] = [
            {"channel": c, "configured_mean": float(space.mean[c]), "mean": est.per_channel_shift[c],
             "mean_ci": list(est.per_channel_shift_ci[c]), "configured_std": configured_std[c],
             "std": 1 / est.per_channel_scaling[c],
             "std_ci": [1 / est.per_channel_scaling_ci[c][1], 1 / est.per_channel_scaling_ci[c][0]]}
            for c in range(len(space.mean))]
    return section


# ---------------------------------------------------------------- posterior


def _quantile(x: torch.Tensor, q: float) -> float:
    return float(np.quantile(x.flatten().numpy(), q))  # torch.quantile refuses more than 2**24 values


def posterior_stats(mean: torch.Tensor, logvar: torch.Tensor, bins: int = 60, seed: int = 0) -> dict:
    """How large the encoder's noise is, in absolute terms and against the precision of fp16/bf16."""
    std = (0.5 * logvar).exp()
    rel = std / mean.abs().clamp_min(torch.finfo(torch.float32).tiny)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed))
    step = (std * noise).abs()
    lv = logvar.flatten()
    counts, edges = torch.histogram(lv, bins=bins)
    log_rel = rel.flatten().log10().clamp(-12, 6)
    rel_counts, rel_edges = torch.histogram(log_rel, bins=bins)
    return {
        "logvar": {
            "min": float(lv.min()), "median": float(lv.median()), "max": float(lv.max()),
            "p01": _quantile(lv, 0.01), "p99": _quantile(lv, 0.99),
            "at_clamp_fraction": float((lv <= LOGVAR_CLAMP + 1e-3).float().mean()),
            "histogram": {"edges": edges.tolist(), "counts": counts.long().tolist()},
        },
        "std": {"median": float(std.median()), "max": float(std.max())},
        "abs_mean": {"median": float(mean.abs().median())},
        "std_over_abs_mean": {
            "median": float(rel.median()), "p99": _quantile(rel, 0.99),
            "log10_histogram": {"edges": rel_edges.tolist(), "counts": rel_counts.long().tolist()},
        },
        # Fraction of latents where one posterior sample moves the value by more than the
        # format's own rounding error: below ~1%, sampling is invisible in that format.
        "sample_exceeds_rounding_fraction": {
            name: float((step > u * mean.abs()).float().mean()) for name, u in UNIT_ROUNDOFF.items()
        },
    }


# ---------------------------------------------------------------- anomalies


@dataclass
class Anomaly:
    """A latent value that is an outlier of its channel's map in many images."""

    kind: str  # "logvar" or "mean"
    channel: int
    y: int
    x: int
    frequency: float  # fraction of images in which it is an outlier
    median_value: float  # its value, median over images
    map_median: float  # the channel map's median, median over images
    median_z: float  # its robust z-score, median over images


def robust_z(maps: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> z-scores against each (image, channel) map's median and MAD, robust to the outliers sought."""
    flat = maps.flatten(2)
    med = flat.median(2, keepdim=True).values
    mad = (flat - med).abs().median(2, keepdim=True).values
    scale = (1.4826 * mad).clamp_min(1e-6 * (med.abs() + 1))
    return ((flat - med) / scale).view_as(maps)


def find_anomalies(maps: torch.Tensor, kind: str, z_threshold: float = 5.0,
                   min_frequency: float = 0.5) -> list[Anomaly]:
    """Values with |robust z| > z_threshold in at least min_frequency of the images, most frequent first."""
    z = robust_z(maps)
    flagged = z.abs() > z_threshold
    frequency = flagged.float().mean(0)  # (C, h, w)
    medians = maps.flatten(2).median(2).values.median(0).values  # (C,)
    found = []
    for c, y, x in (frequency >= min_frequency).nonzero().tolist():
        found.append(Anomaly(kind, c, y, x, float(frequency[c, y, x]), float(maps[:, c, y, x].median()),
                             float(medians[c]), float(z[:, c, y, x].median())))
    return sorted(found, key=lambda a: (-a.frequency, -abs(a.median_z)))


def anomalous_positions(anomalies: list[Anomaly]) -> list[tuple[int, int]]:
    """Distinct (y, x) positions of the anomalies, in their order."""
    return list(dict.fromkeys((a.y, a.x) for a in anomalies))


# ---------------------------------------------------------------- locality


@dataclass
class Change:
    """How much of a decoded image changed, and how far from the edited latent cells."""

    changed_fraction: float  # pixels whose largest channel change exceeds the threshold
    reach_px: int | None  # Chebyshev distance of the farthest changed pixel from the edited cells; None: no change
    radius90_px: int  # distance within which 90% of the total absolute change lies
    max_change: float  # largest per-pixel change, in [0, 1] image units
    profile: list[float | None]  # mean change per band of DISTANCE_BANDS (None: no pixel that far)


def distance_map(size: tuple[int, int], cells: list[tuple[int, int]], downscale: int) -> torch.Tensor:
    """Per pixel, the Chebyshev distance to the nearest edited cell's pixel footprint (0 inside it)."""
    rows, cols = torch.arange(size[0]), torch.arange(size[1])
    best = torch.full(size, 2**31 - 1, dtype=torch.long)
    for y, x in cells:
        dy = (y * downscale - rows).clamp_min(0) + (rows - (y * downscale + downscale - 1)).clamp_min(0)
        dx = (x * downscale - cols).clamp_min(0) + (cols - (x * downscale + downscale - 1)).clamp_min(0)
        best = torch.minimum(best, torch.maximum(dy[:, None], dx[None, :]))
    return best


def change_map(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """(3, H, W) images in [-1, 1] -> (H, W) largest channel change in [0, 1] units."""
    return (after - before).abs().amax(0) / 2


def measure_change(diff: torch.Tensor, cells: list[tuple[int, int]], downscale: int, threshold: float) -> Change:
    dist = distance_map(tuple(diff.shape), cells, downscale).flatten()
    mass = diff.flatten().double()
    changed = mass > threshold
    order = dist.argsort()
    cumulative = mass[order].cumsum(0)
    total = float(cumulative[-1])
    radius90 = int(dist[order][(cumulative >= 0.9 * total).nonzero()[0, 0]]) if total > 0 else 0
    band = torch.bucketize(dist, torch.tensor(DISTANCE_BANDS[1:]), right=True)
    profile = [float(mass[band == b].mean()) if (band == b).any() else None for b in range(len(DISTANCE_BANDS))]
    return Change(
        changed_fraction=float(changed.double().mean()),
        reach_px=int(dist[changed].max()) if changed.any() else None,
        radius90_px=radius90,
        max_change=float(mass.max()),
        profile=profile,
    )


@torch.no_grad()
def perturbation_locality(decode: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor,
                          positions: list[tuple[int, int]], delta: torch.Tensor | float, downscale: int,
                          threshold: float = 1 / 255, batch_size: int = 4) -> tuple[list[Change], torch.Tensor]:
    """Add `delta` (per channel or scalar) to one latent (C, h, w) at each position in turn and decode.

    A purely convolutional decoder can only change pixels within its receptive field of the edit;
    changes beyond it reveal global mixing (normalisation over the map, attention, pooling).
    Returns one Change per position and the (K, H, W) change maps.
    """
    base = decode(latents[None])[0]
    edited = latents.repeat(len(positions), 1, 1, 1)
    delta = torch.as_tensor(delta, dtype=latents.dtype).reshape(-1)
    for k, (y, x) in enumerate(positions):
        edited[k, :, y, x] += delta
    outs = torch.cat([decode(chunk) for chunk in edited.split(batch_size)])
    diffs = torch.stack([change_map(base, out) for out in outs])
    return [measure_change(d, [p], downscale, threshold) for d, p in zip(diffs, positions)], diffs


def replace_with_neighbour_median(latents: torch.Tensor, positions: list[tuple[int, int]]) -> torch.Tensor:
    """Replace every channel at `positions` of a (C, h, w) latent by the median of its 3x3 neighbours,
    leaving out neighbours that are themselves replaced."""
    out = latents.clone()
    skip = set(positions)
    h, w = latents.shape[1:]
    for y, x in positions:
        neighbours = [(j, i) for j in range(max(0, y - 1), min(h, y + 2)) for i in range(max(0, x - 1), min(w, x + 2))
                      if (j, i) not in skip]
        if neighbours:
            values = torch.stack([latents[:, j, i] for j, i in neighbours], dim=1)
            out[:, y, x] = values.median(dim=1).values
    return out


@torch.no_grad()
def replacement_effect(decode: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor, image: torch.Tensor,
                       positions: list[tuple[int, int]], downscale: int, threshold: float = 1 / 255) -> dict:
    """Does the reconstruction change when values at `positions` are replaced by their neighbours' median?"""
    base = decode(latents[None])[0]
    replaced = decode(replace_with_neighbour_median(latents, positions)[None])[0]
    diff = change_map(base, replaced)

    def psnr(x: torch.Tensor) -> float:
        return float(metrics.psnr(x.clamp(-1, 1)[None], image.float()[None])[0])

    return {"positions": [list(p) for p in positions],
            "change": asdict(measure_change(diff, positions, downscale, threshold)),
            "psnr_original": psnr(base), "psnr_replaced": psnr(replaced), "_diff": diff}


def global_operations(module: nn.Module) -> list[str]:
    """Layer types that mix the whole map (normalisation over it, attention, pooling): non-locality by design."""
    names = set()
    for m in module.modules():
        name = type(m).__name__
        if isinstance(m, (nn.GroupNorm, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) or "Attention" in name:
            names.add(name)
    return sorted(names)


# ---------------------------------------------------------------- loading


def open_vae(name: str, subfolder: str | None = None, dtype: str = "fp32", device: str = "cpu",
             random_weights: bool = False) -> Teacher:
    """A preset, Hub repo id or local folder (AutoencoderKL or AutoencoderTiny, so students too) as a Teacher.

    `random_weights` builds a preset's architecture untrained: only the architecture's behaviour is meaningful.
    """
    if random_weights:
        return build_teacher(name, device=device, dtype=dtype)
    return load_teacher(TeacherConfig(name=name, subfolder=subfolder, dtype=dtype), device=device)


def load_images(data: str | Path | None, resolution: int, max_images: int = 32) -> tuple[torch.Tensor, list[str]]:
    """Centre crops of up to `max_images` images spread over a folder; None: scikit-image's photos."""
    if data is None:
        with tempfile.TemporaryDirectory() as tmp:
            files = list_images(sample_photos(tmp))
            return load_eval_images(files, resolution), [f"scikit-image:{f.stem}" for f in files]
    files = list_images(data)
    if max_images < len(files):
        step = len(files) / max_images
        files = [files[int(i * step)] for i in range(max_images)]
    return load_eval_images(files, resolution), [str(f) for f in files]


# ---------------------------------------------------------------- the report


def inspect_vae(vae: nn.Module, images: torch.Tensor, out: str | Path | None = None, *, sources: list[str] | None = None,
                z_threshold: float = 5.0, min_frequency: float = 0.5, delta: float = 3.0, threshold: float = 1 / 255,
                locality_images: int = 2, ordinary_positions: int = 4, anomalous_positions_max: int = 4,
                num_bootstrap: int = 4000, batch_size: int = 8, seed: int = 0, overwrite: bool = False,
                command: str | None = None) -> dict:
    """Run every measurement on `images` (N, 3, R, R) in [-1, 1]; write report.md/.json and figures to `out`.

    `delta` is in units of each channel's latent std; `threshold` is a pixel change in [0, 1] units
    (1/255 = one 8-bit level).
    """
    if out is not None and Path(out).exists() and not overwrite:  # refuse before minutes of decoding, not after
        raise ExportError(f"'{out}' {EXISTS}.")
    if out is not None:
        check_writable(out, "--out")
    teacher = as_teacher(vae)
    ds = teacher.downscale
    if images.shape[-1] % ds or images.shape[-2] % ds:
        raise DataError(f"Image size {tuple(images.shape[-2:])} is not a multiple of the VAE's downscale {ds}; "
                        f"pass a resolution divisible by {ds}.")
    mean, logvar = encode_raw(teacher, images, batch_size)
    factors = factors_from_latents(mean, num_bootstrap, seed=seed)
    space = latent_space_stats(teacher, mean, factors, num_bootstrap, seed)
    report: dict = {
        "vae": {
            "name": teacher.name, "class": type(teacher.vae).__name__,
            "latent_channels": teacher.latent_channels, "downscale": ds, "dtype": str(teacher.dtype).split(".")[-1],
            "configured_scaling_factor": teacher.scaling_factor, "configured_shift_factor": teacher.shift_factor,
            "decoder_global_operations": global_operations(teacher.vae.decoder),
        },
        "data": {"num_images": len(images), "resolution": list(images.shape[-2:]), "sources": sources or []},
        "factors": factors.to_dict(),
        "latent_space": space,
    }

    anomalies = find_anomalies(mean, "mean", z_threshold, min_frequency)
    if logvar is None:
        report["posterior"] = {"note": f"deterministic VAE ({type(teacher.vae).__name__}): no posterior, only latent "
                                       "means are checked."}
    else:
        report["posterior"] = posterior_stats(mean, logvar, seed=seed)
        anomalies = find_anomalies(logvar, "logvar", z_threshold, min_frequency) + anomalies
    report["anomalies"] = {"z_threshold": z_threshold, "min_frequency": min_frequency,
                           "count": len(anomalies), "items": [asdict(a) for a in anomalies[:50]]}

    delta_vec = delta / torch.tensor(factors.per_channel_scaling, dtype=torch.float32)  # delta * channel std
    report["locality"], heat = _locality(raw_decoder(teacher), mean[:locality_images], images,
                                         anomalous_positions(anomalies), delta_vec, ds, threshold,
                                         ordinary_positions, anomalous_positions_max, seed)
    report["locality"]["delta_in_std"] = delta
    if command:
        report["command"] = command
    if out is not None:
        write_report(report, mean, logvar, anomalies, heat, out, overwrite)
    return report


def _locality(decode: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor, images: torch.Tensor,
              marked: list[tuple[int, int]], delta: torch.Tensor, downscale: int, threshold: float,
              ordinary_positions: int, anomalous_positions_max: int, seed: int) -> tuple[dict, list]:
    """Edit anomalous and random ordinary positions of each latent, then replace the anomalies (and as
    a control as many ordinary positions); heat maps of the first image go to the figure."""
    h, w = latents.shape[-2:]
    gen = torch.Generator().manual_seed(seed)
    ordinary = sorted({(y, x) for y in range(h) for x in range(w)} - set(marked))
    cases, heat, replacements = [], [], []
    for i, latent in enumerate(latents):
        picks = torch.randperm(len(ordinary), generator=gen)[:ordinary_positions].tolist()
        chosen = [("anomalous", p) for p in marked[:anomalous_positions_max]] + [("ordinary", ordinary[k]) for k in picks]
        if chosen:
            changes, diffs = perturbation_locality(decode, latent, [p for _, p in chosen], delta, downscale, threshold)
            for (kind, (y, x)), change, diff in zip(chosen, changes, diffs):
                cases.append({"image": i, "kind": kind, "y": y, "x": x, **asdict(change)})
                if i == 0 and sum(kind in title for title, _, _ in heat) < 3:
                    heat.append((f"{kind} edit ({y},{x})", diff, [(y, x)]))
        if marked:
            control = [ordinary[k] for k in torch.randperm(len(ordinary), generator=gen)[:len(marked)].tolist()]
            for kind, where in (("anomalous", marked), ("ordinary (control)", control)):
                effect = replacement_effect(decode, latent, images[i], where, downscale, threshold)
                diff = effect.pop("_diff")
                replacements.append({"image": i, "kind": kind, **effect})
                if i == 0:
                    heat.append((f"replace {kind}", diff, where))
    section = {
        "threshold": threshold, "cases": cases,
        "summary": {kind: _summarise([c for c in cases if c["kind"] == kind]) for kind in ("anomalous", "ordinary")},
        "replacement": replacements or None,
        "replacement_note": None if marked else "no recurring anomalies: nothing to replace.",
    }
    return section, heat


def _summarise(cases: list[dict]) -> dict | None:
    if not cases:
        return None
    reaches = [c["reach_px"] for c in cases if c["reach_px"] is not None]
    return {"count": len(cases),
            "mean_changed_fraction": sum(c["changed_fraction"] for c in cases) / len(cases),
            "max_reach_px": max(reaches) if reaches else None,
            "median_radius90_px": float(torch.tensor([float(c["radius90_px"]) for c in cases]).median()),
            "mean_profile": [_mean([c["profile"][b] for c in cases]) for b in range(len(DISTANCE_BANDS))]}


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def write_report(report: dict, mean: torch.Tensor, logvar: torch.Tensor | None, anomalies: list[Anomaly],
                 heat: list, out: str | Path, overwrite: bool = False) -> Path:
    """report.json, report.md and the figures, all or nothing."""
    with atomic_folder(out, overwrite=overwrite) as tmp:
        figures = {"latent_histograms.png": _plot_histograms(mean, report["factors"], tmp / "latent_histograms.png"),
                   "latent_maps.png": _plot_maps(mean, logvar, anomalies, tmp / "latent_maps.png")}
        if logvar is not None:
            figures["posterior.png"] = _plot_posterior(report["posterior"], tmp / "posterior.png")
        if heat:
            figures["locality.png"] = _plot_locality(heat, report["vae"]["downscale"], report["locality"]["threshold"],
                                                     tmp / "locality.png")
        report["figures"] = figures
        (tmp / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        (tmp / "report.md").write_text(render_markdown(report))
    return Path(out)


# ---------------------------------------------------------------- figures (matplotlib, no pyplot state)


def _figure(rows: int, cols: int, size: float = 2.6):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(cols * size, rows * size * 0.9), dpi=80, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 4)
    return math.ceil(n / cols), cols


def _plot_histograms(mean: torch.Tensor, factors: dict, path: Path) -> str:
    """Per-channel distribution of raw latents, the channel mean and +-1 std marked."""
    channels = mean.shape[1]
    fig, axes = _figure(*_grid(channels))
    for c, ax in zip(range(channels), axes.flat):
        ax.set_axis_on()
        values = mean[:, c].flatten().numpy()
        ax.hist(values, bins=60, color="tab:blue")
        mu, sd = factors["per_channel_shift"][c], 1 / factors["per_channel_scaling"][c]
        for v, style in ((mu, "-"), (mu - sd, "--"), (mu + sd, "--")):
            ax.axvline(v, color="k", ls=style, lw=0.8)
        ax.set_title(f"ch {c}: mean {mu:.3g}, std {sd:.3g}", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.suptitle("Raw latents per channel", fontsize=9)
    fig.savefig(path)
    return "Per-channel histograms of raw latents (mean and +-1 std marked)."


def _plot_maps(mean: torch.Tensor, logvar: torch.Tensor | None, anomalies: list[Anomaly], path: Path) -> str:
    """Median over images of each channel's logvar (or mean) map, recurring outliers circled."""
    maps = (logvar if logvar is not None else mean).median(0).values
    what = "logvar" if logvar is not None else "latent mean"
    channels = maps.shape[0]
    fig, axes = _figure(*_grid(channels))
    for c, ax in zip(range(channels), axes.flat):
        im = ax.imshow(maps[c].numpy(), cmap="viridis")
        fig.colorbar(im, ax=ax, shrink=0.75).ax.tick_params(labelsize=6)
        for a in anomalies:
            if a.channel == c:
                ax.scatter([a.x], [a.y], s=60, facecolors="none",
                           edgecolors="red" if a.kind == "logvar" else "white", linewidths=1.2)
        ax.set_title(f"ch {c}", fontsize=8)
    fig.suptitle(f"Median {what} per channel; circles: recurring outliers (red logvar, white mean)", fontsize=9)
    fig.savefig(path)
    return f"Median {what} maps per channel with recurring outliers circled."


def _plot_posterior(post: dict, path: Path) -> str:
    fig, axes = _figure(1, 2, size=3.4)
    for ax, hist, xlabel in ((axes[0, 0], post["logvar"]["histogram"], "logvar"),
                             (axes[0, 1], post["std_over_abs_mean"]["log10_histogram"], "log10(std / |mean|)")):
        ax.set_axis_on()
        edges = hist["edges"]
        ax.stairs(hist["counts"], edges, fill=True)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
    for name, u in UNIT_ROUNDOFF.items():
        axes[0, 1].axvline(math.log10(u), color="red" if name == "fp16" else "orange", ls="--", lw=1, label=name)
    axes[0, 1].legend(fontsize=7, title="unit roundoff", title_fontsize=7)
    fig.suptitle("Posterior: log-variance and noise relative to the mean", fontsize=9)
    fig.savefig(path)
    return "Histograms of logvar and of std/|mean| against fp16/bf16 precision."


def _plot_locality(heat: list, downscale: int, threshold: float, path: Path) -> str:
    from matplotlib.patches import Rectangle

    fig, axes = _figure(*_grid(len(heat)))
    for (title, diff, cells), ax in zip(heat, axes.flat):
        im = ax.imshow(diff.clamp_min(1e-5).log10().numpy(), cmap="magma", vmin=-5, vmax=0)
        ax.contour((diff > threshold).numpy(), levels=[0.5], colors="cyan", linewidths=0.6)
        for y, x in cells:
            ax.add_patch(Rectangle((x * downscale - 0.5, y * downscale - 0.5), downscale, downscale,
                                   fill=False, edgecolor="lime", lw=1))
        ax.set_title(title, fontsize=7)
    fig.colorbar(im, ax=axes, shrink=0.6, label="log10 |pixel change|").ax.tick_params(labelsize=6)
    fig.suptitle(f"Decoded change after editing latent cells (green); cyan: change > {threshold:.3g}", fontsize=9)
    fig.savefig(path)
    return "Locality heat maps: log10 of the decoded change after one-position edits and anomaly replacement."


# ---------------------------------------------------------------- text


def _ci(pair: list | tuple) -> str:
    return f"[{pair[0]:.4g}, {pair[1]:.4g}]"


def summary(report: dict) -> str:
    """The few lines a user needs: recommended factors against the configured ones, and the verdicts."""
    f, v = report["factors"], report["vae"]
    conf = round(100 * f["confidence"])
    lines = [
        f"{v['name']} ({v['class']}, {v['latent_channels']} latent channels) over {report['data']['num_images']} images:",
        f"  recommended scaling_factor = {f['scaling_factor']:.4g}  ({conf}% CI {_ci(f['scaling_ci'])}; "
        f"{_configured(v['configured_scaling_factor'], f['scaling_ci'])})",
        f"  recommended shift_factor   = {f['shift_factor']:.4g}  ({conf}% CI {_ci(f['shift_ci'])}; "
        f"{_configured(v['configured_shift_factor'], f['shift_ci'])})",
        f"  without a shift (SD/SDXL pipelines ignore shift_factor): scaling_factor = "
        f"{f['scaling_factor_without_shift']:.4g} {_ci(f['scaling_without_shift_ci'])}",
    ]
    space = report["latent_space"]
    if "channels" in space:
        chans = space["channels"]
        inside_mean = sum(c["mean_ci"][0] <= c["configured_mean"] <= c["mean_ci"][1] for c in chans)
        inside_std = sum(c["std_ci"][0] <= c["configured_std"] <= c["std_ci"][1] for c in chans)
        lines.append(f"  latent space {space['describe']}: the configured per-channel means lie inside their {conf}% "
                     f"intervals for {inside_mean}/{len(chans)} channels, the stds for {inside_std}/{len(chans)} "
                     "(report.json: recommended per-channel values)")
    lines.append(f"  in the configured latent space the latents have mean {space['in_space']['mean']:.3g}, "
                 f"std {space['in_space']['std']:.3g}")
    post = report["posterior"]
    if "note" in post:
        lines.append(f"  posterior: {post['note']}")
    else:
        exceeds = post["sample_exceeds_rounding_fraction"]
        lines.append(f"  posterior: logvar median {post['logvar']['median']:.3g} (min {post['logvar']['min']:.3g}, "
                     f"max {post['logvar']['max']:.3g}); median std/|mean| {post['std_over_abs_mean']['median']:.2g}; "
                     f"sampling exceeds fp16 rounding at {100 * exceeds['fp16']:.3g}% of latents, "
                     f"bf16 at {100 * exceeds['bf16']:.3g}%")
    an = report["anomalies"]
    where = ", ".join(f"{a['kind']} ch{a['channel']}@({a['y']},{a['x']}) {100 * a['frequency']:.0f}%"
                      for a in an["items"][:5])
    lines.append(f"  recurring outliers (|z| > {an['z_threshold']:g} in >= {100 * an['min_frequency']:.0f}% of "
                 f"images): {an['count']}" + (f" - {where}" if where else ""))
    for kind, s in report["locality"]["summary"].items():
        if s:
            lines.append(f"  locality, {kind} edits: {100 * s['mean_changed_fraction']:.3g}% of pixels change, "
                         f"farthest change {s['max_reach_px']} px, 90% of the change within {s['median_radius90_px']:g} px; "
                         f"mean change {fmt(s['mean_profile'][0], '.2g')} inside the cell, {fmt(s['mean_profile'][-2], '.2g')} "
                         f"at {DISTANCE_BANDS[-2]}-{DISTANCE_BANDS[-1] - 1} px")
    for r in report["locality"]["replacement"] or []:
        lines.append(f"  replacing {len(r['positions'])} {r['kind']} positions (image {r['image']}): "
                     f"{100 * r['change']['changed_fraction']:.3g}% of pixels change, "
                     f"PSNR vs input {r['psnr_original']:.2f} -> {r['psnr_replaced']:.2f} dB")
    return "\n".join(lines)


def _verdict(value: float, ci: list | tuple) -> str:
    return ", inside the interval" if ci[0] <= value <= ci[1] else ", outside the interval"


def _configured(value: float | None, ci: list | tuple) -> str:
    if value is None:
        return "not used: the latent space is not scalar"
    return f"configured {value:.4g}{_verdict(value, ci)}"


def render_markdown(report: dict) -> str:
    v, f, d = report["vae"], report["factors"], report["data"]
    conf = round(100 * f["confidence"])
    md = [f"# Latent-space report: {v['name']}", ""]
    if "random weights" in v["name"]:
        md += ["> **Random weights.** This VAE is a preset architecture, untrained: only properties of the "
               "architecture (locality, global operations) mean anything here, not the factors or anomalies.", ""]
    md += [
        f"- VAE class: `{v['class']}`, {v['latent_channels']} latent channels, downscale {v['downscale']}, "
        f"dtype {v['dtype']}",
        f"- Data: {d['num_images']} images, centre crops {d['resolution'][0]}x{d['resolution'][1]}"
        + (f" ({', '.join(Path(s).name for s in d['sources'][:10])}{', ...' if len(d['sources']) > 10 else ''})"
           if d["sources"] else ""),
        f"- Decoder operations that mix the whole map: {', '.join(v['decoder_global_operations']) or 'none'}",
    ]
    if report.get("command"):
        md += [f"- Reproduce: `{report['command']}`"]
    md += ["", "## Scale and shift", "",
           f"Raw latents z; diffusion-space latents are (z - shift_factor) * scaling_factor. "
           f"Intervals: {conf}% bootstrap over images (percentile interval, expanded for few images).", "",
           "| | estimated | interval | configured |", "|---|---|---|---|",
           f"| scaling_factor = 1/std | {f['scaling_factor']:.4g} | {_ci(f['scaling_ci'])} | "
           f"{fmt(v['configured_scaling_factor'], '.4g')} |",
           f"| shift_factor = mean | {f['shift_factor']:.4g} | {_ci(f['shift_ci'])} | "
           f"{fmt(v['configured_shift_factor'], '.4g')} |",
           f"| scaling_factor without shift = 1/RMS | {f['scaling_factor_without_shift']:.4g} | "
           f"{_ci(f['scaling_without_shift_ci'])} | |", "",
           "| channel | scaling (1/std) | interval | shift (mean) | interval |", "|---|---|---|---|---|"]
    for c in range(v["latent_channels"]):
        md.append(f"| {c} | {f['per_channel_scaling'][c]:.4g} | {_ci(f['per_channel_scaling_ci'][c])} | "
                  f"{f['per_channel_shift'][c]:.4g} | {_ci(f['per_channel_shift_ci'][c])} |")
    space = report["latent_space"]
    md += ["", "![per-channel histograms](latent_histograms.png)", "", "## Latent space", "",
           f"The family's space (what its diffusion model sees and the student learns): {space['describe']}. "
           f"In it, these latents have mean {space['in_space']['mean']:.3g} and std {space['in_space']['std']:.3g}."]
    if "channels" in space:
        md += ["", "Per-channel statistics the space normalises by, configured and estimated here "
               f"({conf}% intervals); `recommended` in report.json holds the estimated space.", "",
               "| channel | configured mean | mean | interval | configured std | std | interval |",
               "|---|---|---|---|---|---|---|"]
        md += [f"| {c['channel']} | {c['configured_mean']:.4g} | {c['mean']:.4g} | {_ci(c['mean_ci'])} | "
               f"{c['configured_std']:.4g} | {c['std']:.4g} | {_ci(c['std_ci'])} |" for c in space["channels"]]
    md += ["", "## Posterior", ""]
    post = report["posterior"]
    if "note" in post:
        md += [post["note"]]
    else:
        lv, ex = post["logvar"], post["sample_exceeds_rounding_fraction"]
        md += [f"- logvar: min {lv['min']:.3g}, 1% {lv['p01']:.3g}, median {lv['median']:.3g}, 99% {lv['p99']:.3g}, "
               f"max {lv['max']:.3g}; {100 * lv['at_clamp_fraction']:.3g}% at diffusers' clamp ({LOGVAR_CLAMP:g})",
               f"- std: median {post['std']['median']:.3g}, max {post['std']['max']:.3g}; |mean|: median "
               f"{post['abs_mean']['median']:.3g}; std/|mean|: median {post['std_over_abs_mean']['median']:.3g}, "
               f"99% {post['std_over_abs_mean']['p99']:.3g}",
               f"- One posterior sample moves the latent by more than the format's rounding error at "
               f"{100 * ex['fp16']:.3g}% of values in fp16 and {100 * ex['bf16']:.3g}% in bf16.",
               "", "![posterior](posterior.png)"]
    an = report["anomalies"]
    md += ["", "## Recurring outliers", "",
           f"Values with robust |z| > {an['z_threshold']:g} (median/MAD of their channel map) in at least "
           f"{100 * an['min_frequency']:.0f}% of the images: **{an['count']}**.", ""]
    if an["items"]:
        md += ["| map | channel | y | x | frequency | value (median) | map median | z (median) |",
               "|---|---|---|---|---|---|---|---|"]
        md += [f"| {a['kind']} | {a['channel']} | {a['y']} | {a['x']} | {100 * a['frequency']:.0f}% | "
               f"{a['median_value']:.3g} | {a['map_median']:.3g} | {a['median_z']:.3g} |" for a in an["items"][:20]]
    md += ["", "![latent maps](latent_maps.png)", "", "## Locality", "",
           f"Each edit adds {report['locality']['delta_in_std']:g} channel std to every channel at one latent "
           f"position and decodes. A pixel counts as changed above {report['locality']['threshold']:.3g} "
           "(image range [0, 1]); distances are Chebyshev pixels from the edited cell's footprint.", "",
           "| image | kind | y | x | changed pixels | farthest change (px) | 90% of change within (px) | max change |",
           "|---|---|---|---|---|---|---|---|"]
    md += [f"| {c['image']} | {c['kind']} | {c['y']} | {c['x']} | {100 * c['changed_fraction']:.3g}% | "
           f"{c['reach_px']} | {c['radius90_px']} | {c['max_change']:.3g} |" for c in report["locality"]["cases"]]
    bands = [f"{lo}-{hi - 1} px" if hi - lo > 1 else f"{lo} px" for lo, hi in zip(DISTANCE_BANDS, DISTANCE_BANDS[1:])]
    md += ["", "Mean pixel change by distance from the edited cell (0 px: inside its footprint):", "",
           "| edits | " + " | ".join(bands + [f">= {DISTANCE_BANDS[-1]} px"]) + " |",
           "|---|" + "---|" * len(DISTANCE_BANDS)]
    for kind, summ in report["locality"]["summary"].items():
        if summ:
            md.append(f"| {kind} | " + " | ".join(fmt(v, ".2g") for v in summ["mean_profile"]) + " |")
    md += ["", "### Replacing outliers by their neighbours' median", ""]
    if report["locality"]["replacement"]:
        md += ["| image | positions | count | changed pixels | farthest change (px) | PSNR vs input before | after |",
               "|---|---|---|---|---|---|---|"]
        md += [f"| {r['image']} | {r['kind']} | {len(r['positions'])} | {100 * r['change']['changed_fraction']:.3g}% | "
               f"{r['change']['reach_px']} | {r['psnr_original']:.2f} | {r['psnr_replaced']:.2f} |"
               for r in report["locality"]["replacement"]]
    else:
        md += [report["locality"]["replacement_note"]]
    if "locality.png" in report.get("figures", {}):
        md += ["", "![locality](locality.png)"]
    return "\n".join(md) + "\n"
