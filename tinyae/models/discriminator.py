"""Discriminators: they see an image together with the latent it was decoded from.

Conditioning on the (nearest-upsampled) teacher latent makes them judge "is this a
plausible image for this latent", not just "is this a plausible image", so the decoder
is pushed towards the image the latent describes. Two architectures:

- `patch`: a small GroupNorm PatchGAN (three stride-2 convs) giving one map of scores;
- `multiscale`: the stronger design of madebyollin/seraena, a BatchNorm PatchGAN whose every
  depth scores the image through its own 1x1 projection, all pooled to 1/8 of the image and
  stacked, so coarse and fine evidence both reach the decoder (~7.5M parameters at width 64).
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

    def __init__(self, latent_channels: int, width: int = 64, depth: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        n_in = 3 + latent_channels
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

    def __init__(self, latent_channels: int, width: int = 64):
        super().__init__()
        plan = [(width, 1), (2 * width, 2), (4 * width, 2), (8 * width, 2), (8 * width, 1), (8 * width, 1)]
        self.stages = nn.ModuleList()
        n_in = 3 + latent_channels
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


def build_discriminator(kind: str, latent_channels: int, width: int = 64) -> nn.Module:
    return DISCRIMINATORS[kind](latent_channels, width)
