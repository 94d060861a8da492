"""How to scale a VAE's latents into diffusion space: the one estimator of scale and shift factors.

The latent-diffusion paper chose SD's scaling_factor = 1 / std of the latents over a
data set, so the diffusion model sees roughly unit variance; a different autoencoder
needs its own factors, estimated the same way. Per-channel families (Qwen-Image, FLUX.2)
normalise each channel instead, so the estimate carries per-channel means and stds too,
computed in the layout the family's latent space normalises (FLUX.2: 2x2-patchified).
Training (`--estimate-factors`), the latent-space report and the tiny teacher's training
all use `estimate_factors`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from tinyae.config import TeacherConfig
from tinyae.errors import DataError
from tinyae.models.student import Student
from tinyae.models.teacher import Teacher, guess_family, resolve_space
from tinyae.models.tiny_autoencoder import diffusers_model


def as_teacher(model: nn.Module) -> Teacher:
    """A Teacher, a diffusers VAE (any class tinyae distills from) or a tinyae Student, as a Teacher."""
    if isinstance(model, Teacher):
        return model
    if isinstance(model, Student):
        model = diffusers_model(model)
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "encode") or not hasattr(model, "decode"):
        raise TypeError(f"Expected a Teacher, a diffusers VAE or a Student, got {type(model).__name__}.")
    space = resolve_space(model, TeacherConfig(name=type(model).__name__), None)
    return Teacher(model, name=type(model).__name__, family=guess_family(model, space), latent_space=space)


def _batches(images: torch.Tensor | Iterable[torch.Tensor], batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise DataError(f"Expected images of shape (N, 3, H, W) in [-1, 1], got {tuple(images.shape)}.")
        return images.split(batch_size)
    return (batch["images"] if isinstance(batch, dict) else batch for batch in images)


@torch.no_grad()
def encode_raw(teacher: Teacher, images: torch.Tensor | Iterable[torch.Tensor],
               batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Raw (unscaled) latent means and log-variances on the CPU; log-variance is None for a deterministic VAE."""
    means, logvars = [], []
    for batch in _batches(images, batch_size):
        if teacher.deterministic:
            means.append(teacher.encode_raw(batch).cpu())
        else:
            mean, logvar = teacher.posterior(batch)
            means.append(mean.cpu())
            logvars.append(logvar.cpu())
    if not means:
        raise DataError("No images to encode.")
    return torch.cat(means), (torch.cat(logvars) if logvars else None)


@dataclass
class FactorEstimate:
    """scaling_factor = 1/std and shift_factor = mean of raw latents, with bootstrap intervals over images.

    `scaling_factor_without_shift` = 1/RMS is the factor for pipelines that ignore shift_factor (SD, SDXL).
    """

    scaling_factor: float
    shift_factor: float
    scaling_ci: tuple[float, float]
    shift_ci: tuple[float, float]
    scaling_factor_without_shift: float
    scaling_without_shift_ci: tuple[float, float]
    per_channel_scaling: list[float]
    per_channel_shift: list[float]
    per_channel_scaling_ci: list[tuple[float, float]]
    per_channel_shift_ci: list[tuple[float, float]]
    num_images: int
    confidence: float

    def to_dict(self) -> dict:
        return asdict(self)

    def choose(self, min_shift: float = 0.0) -> tuple[float, float]:
        """(scaling_factor, shift_factor) to configure: a shift only if |mean| > min_shift * std.

        Without a shift the factor is 1/RMS, which gives unit second moment: what a pipeline
        that ignores shift_factor (SD, SDXL) needs.
        """
        if abs(self.shift_factor) * self.scaling_factor > min_shift:
            return self.scaling_factor, self.shift_factor
        return self.scaling_factor_without_shift, 0.0


def factors_from_latents(latents: torch.Tensor | Sequence[torch.Tensor], num_bootstrap: int = 4000,
                         confidence: float = 0.95, seed: int = 0) -> FactorEstimate:
    """Factors of raw latents (N, C, h, w), or of several such batches of different sizes.

    Every latent value counts once; the interval resamples whole images, which are the independent units.
    """
    batches = [latents] if isinstance(latents, torch.Tensor) else list(latents)
    flat = [b.double().flatten(2) for b in batches]
    sums = torch.cat([x.sum(2) for x in flat])  # (N, C)
    squares = torch.cat([x.pow(2).sum(2) for x in flat])
    positions = torch.cat([torch.full((len(x),), x.shape[2], dtype=torch.float64) for x in flat])  # per image
    n, channels = sums.shape
    if n < 2:
        raise DataError(f"Estimating latent factors needs at least 2 images for an interval, got {n}.")
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, n, (num_bootstrap, n), generator=gen)
    counts = torch.zeros(num_bootstrap, n, dtype=torch.float64).scatter_add_(
        1, picks, torch.ones_like(picks, dtype=torch.float64))
    weights = torch.cat([torch.ones(1, n, dtype=torch.float64), counts])  # row 0 is the data itself
    s1, s2 = weights @ sums, weights @ squares  # (1 + B, C)
    values = (weights @ positions)[:, None]
    ch_mean, ch_sq = s1 / values, s2 / values
    ch_std = (ch_sq - ch_mean**2).clamp_min(0).sqrt()
    g_mean, g_sq = ch_mean.mean(1), ch_sq.mean(1)
    g_std = (g_sq - g_mean**2).clamp_min(0).sqrt()
    if g_std[0] == 0 or (ch_std[0] == 0).any():
        raise DataError("The latents are constant over the data (zero std): no scaling factor makes them unit-variance.")

    lo, hi = _expanded_tails(n, confidence)

    def interval(samples: torch.Tensor) -> tuple[float, float]:
        q = torch.quantile(samples[1:], torch.tensor([lo, hi], dtype=samples.dtype))
        return float(q[0]), float(q[1])

    ch_scale = 1 / ch_std
    return FactorEstimate(
        scaling_factor=float(1 / g_std[0]),
        shift_factor=float(g_mean[0]),
        scaling_ci=interval(1 / g_std),
        shift_ci=interval(g_mean),
        scaling_factor_without_shift=float(g_sq[0].rsqrt()),
        scaling_without_shift_ci=interval(g_sq.rsqrt()),
        per_channel_scaling=ch_scale[0].tolist(),
        per_channel_shift=ch_mean[0].tolist(),
        per_channel_scaling_ci=[interval(ch_scale[:, c]) for c in range(channels)],
        per_channel_shift_ci=[interval(ch_mean[:, c]) for c in range(channels)],
        num_images=n,
        confidence=confidence,
    )


def _expanded_tails(n: int, confidence: float) -> tuple[float, float]:
    """Percentile levels of Hesterberg's expanded percentile interval.

    Plain percentile intervals from few images are too narrow (with 7 images they miss about 13% of
    the time at 95%); widening the tails to z = sqrt(n / (n - 1)) * t_{n-1} restores the coverage.
    """
    from scipy.stats import norm, t

    alpha = (1 - confidence) / 2
    tail = float(norm.cdf(-math.sqrt(n / (n - 1)) * t.ppf(1 - alpha, n - 1)))
    return tail, 1 - tail


def estimate_factors(teacher_or_vae: nn.Module, images: torch.Tensor | Iterable[torch.Tensor], *,
                     batch_size: int = 8, sample: bool = False, num_bootstrap: int = 4000,
                     confidence: float = 0.95, seed: int = 0) -> FactorEstimate:
    """Estimate scaling/shift factors of a VAE over images in [-1, 1]: a tensor, or a finite iterable of
    batches (which may differ in size, e.g. centre crops and random crops).

    The posterior mean is used by default because that is what `Teacher.encode` hands the student;
    `sample=True` draws from the posterior as the latent-diffusion paper did. The latents are
    taken in the teacher's `latent_space.stats_view`, so `teacher.latent_space.fitted(estimate)`
    is the same convention with these numbers.
    """
    teacher, noise = as_teacher(teacher_or_vae), torch.Generator().manual_seed(seed)
    latents = []
    for batch in _batches(images, batch_size):
        mean, logvar = encode_raw(teacher, batch, batch_size)
        if sample and logvar is not None:
            mean = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=noise)
        latents.append(teacher.latent_space.stats_view(mean))
    if not latents:
        raise DataError("No images to encode.")
    return factors_from_latents(latents, num_bootstrap, confidence, seed)
