"""Distillation losses, as TAESD's author describes them (REFERENCE.md §7).

- encoder: match the teacher's diffusion-space latents (MSE, or L1 for sharper latents);
- decoder: a pixel term, LPIPS with a real pretrained backbone, and an adversarial
  term from a discriminator that sees the image *and* the teacher latent it was
  decoded from, so it judges "is this a plausible image for this latent".
Every term is returned by name so it can be logged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tinyae.config import LossConfig


def distance(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    return F.l1_loss(a.float(), b.float()) if kind == "l1" else F.mse_loss(a.float(), b.float())


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


def generator_adv_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.float().mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge loss: stable for small patch discriminators."""
    return F.relu(1 - real_logits.float()).mean() + F.relu(1 + fake_logits.float()).mean()


class DistillLoss(nn.Module):
    """Weighted loss terms of one student step; the weights come from the recipe."""

    def __init__(self, config: LossConfig):
        super().__init__()
        self.config = config

    def lpips(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        from tinyae.perceptual import lpips_distance

        return lpips_distance(a, b, net=self.config.lpips_net).mean()

    def encoder_terms(self, student_latents: torch.Tensor, teacher_latents: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"latent": distance(student_latents, teacher_latents, self.config.latent)}

    def decoder_terms(self, recon: torch.Tensor, target: torch.Tensor, fake_logits: torch.Tensor | None = None
                      ) -> dict[str, torch.Tensor]:
        c = self.config
        terms = {"pixel": distance(recon, target, c.pixel)}
        if c.lpips_weight > 0:
            terms["lpips"] = self.lpips(recon, target)
        if fake_logits is not None:
            terms["adv"] = generator_adv_loss(fake_logits)
        return terms

    def weighted_total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        c = self.config
        weights = {"latent": c.latent_weight, "pixel": c.pixel_weight, "lpips": c.lpips_weight, "adv": c.adv_weight}
        return sum(weights[name] * value for name, value in terms.items())
