"""Discriminators: they see an image together with the latent it was decoded from.

Conditioning on the (nearest-upsampled) teacher latent makes them judge "is this a
plausible image for this latent", not just "is this a plausible image", so the decoder
is pushed towards the image the latent describes. Two architectures:

- `patch`: a small GroupNorm PatchGAN (three stride-2 convs) giving one map of scores;
- `multiscale`: the stronger design of madebyollin/seraena, a BatchNorm PatchGAN whose every
  depth scores the image through its own 1x1 projection, all pooled to 1/8 of the image and
  stacked, so coarse and fine evidence both reach the decoder (~7.5M parameters at width 64).

For video students, `FrameGroupDiscriminator` wraps either design: it cuts a clip into groups of a
few consecutive frames, stacks each group on the channels and judges it with the latents of those
frames (averaged over the group), so it sees motion (flicker, frames that drift apart) as well as
each frame, as madebyollin/seraena's TAEHV notebook judges groups of 3 frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _condition(images: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    cond = F.interpolate(latents.to(images.dtype), size=images.shape[-2:], mode="nearest")
    return torch.cat([images, cond], dim=1)


class PatchDiscriminator(nn.Module):
    """Patch discriminator on [image, nearest-upsampled latent]; outputs a map of scores."""

    def __init__(self, latent_channels: int, width: int = 64, depth: int = 3, image_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        n_in = image_channels + latent_channels
        for i in range(depth):
            n_out = width * 2**i
            layers += [nn.Conv2d(n_in, n_out, 4, stride=2, padding=1), nn.GroupNorm(8, n_out) if i else nn.Identity(),
                       nn.LeakyReLU(0.2)]
            n_in = n_out
        layers.append(nn.Conv2d(n_in, 1, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return self.layers(_condition(images, latents))


class MultiScaleDiscriminator(nn.Module):
    """Conv-BatchNorm-ReLU stages (widths w, 2w, 4w, 8w, 8w, 8w; three of them stride 2), each scored by a 1x1 conv.

    Returns (B, 6, H/8, W/8): one score map per depth, average-pooled to a common size.
    """

    def __init__(self, latent_channels: int, width: int = 64, image_channels: int = 3):
        super().__init__()
        plan = [(width, 1), (2 * width, 2), (4 * width, 2), (8 * width, 2), (8 * width, 1), (8 * width, 1)]
        self.stages = nn.ModuleList()
        n_in = image_channels + latent_channels
        for n_out, stride in plan:
            kernel = 4 if stride == 2 else 3
            self.stages.append(nn.Sequential(nn.Conv2d(n_in, n_out, kernel, stride, padding=1, bias=False),
                                             nn.BatchNorm2d(n_out), nn.ReLU()))
            n_in = n_out
        self.scores = nn.ModuleList(nn.Conv2d(n_out, 1, 1, bias=False) for n_out, _ in plan)

    def forward(self, images: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        size = (images.shape[-2] // 8, images.shape[-1] // 8)
        x, out = _condition(images, latents), []
        for stage, score in zip(self.stages, self.scores):
            x = stage(x)
            out.append(F.adaptive_avg_pool2d(score(x), size))
        return torch.cat(out, dim=1)


DISCRIMINATORS = {"patch": PatchDiscriminator, "multiscale": MultiScaleDiscriminator}


def frame_latents(latents: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, C, T, h, w) latents -> (B, C, frames, h, w): each frame's own latent, by the video VAEs' causal rule
    (frame 0 has latent 0, then each latent covers the next (frames - 1) / (T - 1) frames)."""
    t = latents.shape[2]
    per_latent = max(1, -(-(frames - 1) // max(t - 1, 1)))
    # Built on the device (no host list copied in, which would stall the GPU on every call): frame f's latent is
    # 1 + (f - 1) // per_latent, which floor division makes 0 for frame 0.
    index = (torch.arange(frames, device=latents.device) - 1).div(per_latent, rounding_mode="floor").add(1)
    return latents.index_select(2, index.clamp(max=t - 1))


class FrameGroupDiscriminator(nn.Module):
    """A 2D discriminator (`kind`) on groups of `group` consecutive frames, stacked on channels, each conditioned
    on its frames' mean latent. Takes (B, 3, F, H, W) clips and (B, C, T, h, w) latents; returns the inner
    design's score maps of its F // group groups stacked on channels, (B, groups x maps, h', w') (trailing frames
    that fill no group are not judged)."""

    def __init__(self, kind: str, latent_channels: int, width: int = 64, group: int = 3):
        super().__init__()
        self.group = group
        self.inner = DISCRIMINATORS[kind](latent_channels, width, image_channels=3 * group)

    def forward(self, clips: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = clips.shape
        groups = f // self.group
        if groups == 0:
            raise ValueError(f"A clip of {f} frames has no group of {self.group} to judge; lower loss.disc_frames.")
        used = groups * self.group
        frames = clips[:, :, :used].reshape(b, c, groups, self.group, h, w).permute(0, 2, 3, 1, 4, 5)
        conds = frame_latents(latents, f)[:, :, :used]
        conds = conds.reshape(*conds.shape[:2], groups, self.group, *conds.shape[-2:]).mean(3).transpose(1, 2)
        scores = self.inner(frames.reshape(b * groups, self.group * c, h, w), conds.flatten(0, 1))
        return scores.unflatten(0, (b, groups)).flatten(1, 2)  # one row per clip, as the image designs give


def build_discriminator(kind: str, latent_channels: int, width: int = 64, frames: int = 0) -> nn.Module:
    """The image discriminator `kind`; with `frames` > 0, its frame-group version for video students."""
    if frames > 0:
        return FrameGroupDiscriminator(kind, latent_channels, width, frames)
    return DISCRIMINATORS[kind](latent_channels, width)
