"""Distillation losses, each with its weight beside it.

- encoder: match the teacher's diffusion-space latents (MSE, or L1 for sharper latents);
- decoder: a pixel term, LPIPS with a real pretrained backbone, and an adversarial term
  from a discriminator that sees the image together with the teacher latent it was decoded
  from (tinyae.models.discriminator).

TAESD's author describes this family of losses in github.com/madebyollin/taesd issues 2,
11 and 16: the encoder matches the teacher's latents; the decoder is trained as a
latent-conditioned GAN with a little pixel loss, LPIPS weighted below the adversarial term.
Every term is returned by name so it can be logged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tinyae.config import LossConfig
from tinyae.evaluation.lpips import lpips_distance


def distance(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    return F.l1_loss(a.float(), b.float()) if kind == "l1" else F.mse_loss(a.float(), b.float())


def generator_adv_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.float().mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge loss: stable for small patch discriminators."""
    return F.relu(1 - real_logits.float()).mean() + F.relu(1 + fake_logits.float()).mean()


class DistillLoss(nn.Module):
    """The loss terms of one student step and their weighted sum; weights come from the recipe."""

    def __init__(self, config: LossConfig):
        super().__init__()
        self.config = config

    def encoder_terms(self, student_latents: torch.Tensor, teacher_latents: torch.Tensor
                      ) -> dict[str, tuple[float, torch.Tensor]]:
        c = self.config
        return {"latent": (c.latent_weight, distance(student_latents, teacher_latents, c.latent))}

    def decoder_terms(self, recon: torch.Tensor, target: torch.Tensor, fake_logits: torch.Tensor | None = None
                      ) -> dict[str, tuple[float, torch.Tensor]]:
        c = self.config
        terms = {"pixel": (c.pixel_weight, distance(recon, target, c.pixel))}
        if c.lpips_weight > 0:
            terms["lpips"] = (c.lpips_weight, lpips_distance(recon, target, net=c.lpips_net).mean())
        if fake_logits is not None:
            terms["adv"] = (c.adv_weight, generator_adv_loss(fake_logits))
        return terms


def weighted_total(terms: dict[str, tuple[float, torch.Tensor]]) -> torch.Tensor:
    return sum(weight * value for weight, value in terms.values())
