"""The discriminator: it sees an image together with the latent it was decoded from.

Conditioning on the (nearest-upsampled) teacher latent makes it judge "is this a
plausible image for this latent", not just "is this a plausible image", so the
decoder is pushed towards the image the latent describes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Discriminator(nn.Module):
    """Patch discriminator on [image, nearest-upsampled latent]; outputs a map of logits."""

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
        cond = F.interpolate(latents.to(images.dtype), size=images.shape[-2:], mode="nearest")
        return self.layers(torch.cat([images, cond], dim=1))
