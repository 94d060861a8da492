"""Video metrics, per clip, for (B, 3, F, H, W) clips in [-1, 1].

Frame quality is tinyae.evaluation.metrics' PSNR, SSIM and LPIPS on every frame (frames
folded into the batch, then averaged per clip), so the numbers compare with the image
students'. What frame metrics miss is flicker: a decoder can get each frame about right and
still shimmer. `flicker` measures how the clip's frame-to-frame changes depart from the
reference's: the mean absolute difference of the temporal differences, on [0, 1] pixels,

    flicker = mean |(a[t+1] - a[t]) - (b[t+1] - b[t])|

which is 0 when `a` changes exactly as `b` does (even if both are off by a constant), and grows
with every wobble `b` does not have. `temporal_psnr` is the same in dB (10 log10 of 1 / MSE).
"""

from __future__ import annotations

import math

import torch

from tinyae.evaluation.metrics import lpips, psnr, ssim


def _check_clips(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.ndim != 5:
        raise ValueError(f"Expected two (B, C, F, H, W) clips of equal shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}.")


def _frames(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).flatten(0, 1)


def _per_clip(values: torch.Tensor, clips: int) -> torch.Tensor:
    return values.view(clips, -1).mean(1)


def _temporal_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float().diff(dim=2) - b.float().diff(dim=2)) / 2  # [-1, 1] -> [0, 1] units


@torch.no_grad()
def flicker(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean |change of a - change of b| between consecutive frames, per clip, in [0, 1] pixel units."""
    _check_clips(a, b)
    return _temporal_error(a, b).abs().mean(dim=(1, 2, 3, 4))


@torch.no_grad()
def temporal_psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR of the frame-to-frame changes, per clip, in dB (+inf when they change identically)."""
    _check_clips(a, b)
    mse = _temporal_error(a, b).square().mean(dim=(1, 2, 3, 4))
    return torch.where(mse > 0, -10 * torch.log10(mse), torch.full_like(mse, math.inf))


def video_metrics(a: torch.Tensor, b: torch.Tensor, with_lpips: bool = True, lpips_net: str = "alex"
                  ) -> dict[str, torch.Tensor]:
    """Per clip (B,): per-frame psnr, ssim (and lpips) averaged over the frames, then flicker and temporal_psnr."""
    _check_clips(a, b)
    fa, fb, clips = _frames(a), _frames(b), a.shape[0]
    out = {"psnr": _per_clip(psnr(fa, fb), clips), "ssim": _per_clip(ssim(fa, fb), clips)}
    if with_lpips:
        out["lpips"] = _per_clip(lpips(fa, fb, lpips_net), clips)
    out["flicker"] = flicker(a, b)
    out["temporal_psnr"] = temporal_psnr(a, b)
    return out
