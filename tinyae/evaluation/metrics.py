"""Image and latent metrics, per image, for images in [-1, 1].

Every image metric returns one value per image, shape (N,), so callers can
average, find the worst image or batch freely. PSNR, SSIM and MS-SSIM are
computed on [0, 1] (images are mapped with (x + 1) / 2) with the standard
constants, so the numbers compare with published ones; nothing is clamped here.

- PSNR: kornia, 10 log10(1 / MSE); identical images give +inf.
- SSIM: kornia, 11x11 Gaussian window (sigma 1.5), "valid" window positions, as Wang et al. 2004.
- MS-SSIM: pytorch-msssim, the standard 5-scale dyadic version (Wang et al. 2003). kornia's
  MS_SSIMLoss is a different quantity (an MS-SSIM + L1 training loss over Gaussians at full
  resolution). Five scales with an 11 px window need a short side of at least 161 px; smaller
  images give NaN rather than a number from fewer scales that would not compare with anything.
- LPIPS: tinyae.evaluation.lpips, with a real pretrained trunk (never a random one).
- Colour: dim or shifted colours are what users of tiny decoders complain about, and PSNR barely
  sees them. `chroma_diff` is the mean CIELAB chroma C*ab of `a` minus that of `b` (negative: duller),
  `saturation_diff` the same for HSV saturation in [0, 1], `colour_error` the absolute chroma
  difference (per image, so errors of opposite sign do not cancel across images).
"""

from __future__ import annotations

import math

import torch
from kornia.color import rgb_to_hsv, rgb_to_lab
from kornia.metrics import psnr as _kornia_psnr
from kornia.metrics import ssim as _kornia_ssim
from pytorch_msssim import ms_ssim as _ms_ssim

from tinyae.evaluation.lpips import lpips_distance

SSIM_WINDOW = 11
MS_SSIM_MIN_SIZE = (SSIM_WINDOW - 1) * 2**4 + 1  # 161 px: the coarsest of 5 scales still fits one window
MS_SSIM_NOTE = (f"MS-SSIM is the standard 5-scale metric; it needs images of at least {MS_SSIM_MIN_SIZE} px "
                "and is NaN (null in JSON) below that.")


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"Expected two (N, C, H, W) tensors of equal shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}.")


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x.float().add(1).div(2)


@torch.no_grad()
def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image; +inf for identical images."""
    _check_pair(a, b)
    return torch.stack([_kornia_psnr(x, y, max_val=1.0) for x, y in zip(_unit(a), _unit(b))])


@torch.no_grad()
def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM per image (averaged over channels and window positions)."""
    _check_pair(a, b)
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW} px, got {tuple(a.shape[-2:])}.")
    return _kornia_ssim(_unit(a), _unit(b), SSIM_WINDOW, max_val=1.0, padding="valid").mean(dim=(1, 2, 3))


@torch.no_grad()
def ms_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Standard 5-scale MS-SSIM per image; NaN for images under MS_SSIM_MIN_SIZE px (see module doc)."""
    _check_pair(a, b)
    if min(a.shape[-2:]) < MS_SSIM_MIN_SIZE:
        return torch.full((a.shape[0],), math.nan, device=a.device)
    return _ms_ssim(_unit(a), _unit(b), data_range=1.0, size_average=False, win_size=SSIM_WINDOW)


@torch.no_grad()
def lpips(a: torch.Tensor, b: torch.Tensor, net: str = "alex") -> torch.Tensor:
    """LPIPS per image with a pretrained trunk (tinyae.evaluation.lpips); raises if none is available."""
    _check_pair(a, b)
    return lpips_distance(a, b, net=net)


def mean_chroma(x: torch.Tensor) -> torch.Tensor:
    """Mean CIELAB chroma C*ab = |(a*, b*)| per image (0 for grey; saturated photo colours reach 60-100)."""
    lab = rgb_to_lab(_unit(x).clamp(0, 1))
    return lab[:, 1:].square().sum(1).sqrt().mean(dim=(1, 2))


def mean_saturation(x: torch.Tensor) -> torch.Tensor:
    """Mean HSV saturation in [0, 1] per image."""
    return rgb_to_hsv(_unit(x).clamp(0, 1))[:, 1].mean(dim=(1, 2))


@torch.no_grad()
def chroma_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean chroma of `a` minus that of `b`, per image: negative when `a`'s colours are duller."""
    _check_pair(a, b)
    return mean_chroma(a) - mean_chroma(b)


@torch.no_grad()
def saturation_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    _check_pair(a, b)
    return mean_saturation(a) - mean_saturation(b)


def image_metrics(a: torch.Tensor, b: torch.Tensor, lpips_net: str = "alex") -> dict[str, torch.Tensor]:
    """All image metrics of a batch pair -> (N,) each: psnr, ssim, ms_ssim, lpips and the colour ones."""
    chroma = chroma_diff(a, b)
    return {"psnr": psnr(a, b), "ssim": ssim(a, b), "ms_ssim": ms_ssim(a, b), "lpips": lpips(a, b, lpips_net),
            "chroma_diff": chroma, "saturation_diff": saturation_diff(a, b), "colour_error": chroma.abs()}


@torch.no_grad()
def latent_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample, in diffusion-space units."""
    _check_pair(pred, target)
    return (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))


class LatentStats:
    """Running sums for latent MSE and per-channel R^2, so evaluation can stream batches."""

    def __init__(self):
        self.n = 0  # positions per channel seen so far
        self.sse = self.sum = self.sum_sq = torch.zeros(0, dtype=torch.float64)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> "LatentStats":
        _check_pair(pred, target)
        pred, target = pred.detach().double().cpu(), target.detach().double().cpu()
        dims = (0, 2, 3)
        sse, total, total_sq = (pred - target).pow(2).sum(dims), target.sum(dims), target.pow(2).sum(dims)
        if self.n == 0:
            self.sse, self.sum, self.sum_sq = sse, total, total_sq
        else:
            self.sse, self.sum, self.sum_sq = self.sse + sse, self.sum + total, self.sum_sq + total_sq
        self.n += target.numel() // target.shape[1]
        return self

    def mse(self) -> float:
        """Mean squared error over all samples, channels and positions."""
        return float(self.sse.sum() / (self.n * len(self.sse)))

    def r2(self) -> torch.Tensor:
        """Per-channel R^2 = 1 - SSE / SST, shape (C,)."""
        sst = self.sum_sq - self.sum.pow(2) / self.n
        return (1 - self.sse / sst).float()

    def pooled_r2(self) -> float:
        """R^2 of all channels together (their SSE and SST summed): one figure for a whole latent space."""
        sst = self.sum_sq - self.sum.pow(2) / self.n
        return float(1 - self.sse.sum() / sst.sum().clamp_min(1e-12))

    def std(self) -> torch.Tensor:
        """Per-channel standard deviation of the targets (the teacher's latents)."""
        return (self.sum_sq / self.n - (self.sum / self.n).pow(2)).clamp_min(0).sqrt().float()


def latent_r2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-channel R^2 = 1 - SSE / SST over all samples and positions, shape (C,).

    1 is perfect, 0 is no better than predicting the channel's mean; unlike MSE it
    does not depend on the teacher's latent scale, so channels and teachers compare.
    """
    return LatentStats().update(pred, target).r2()
