"""The reconstruction losses of distillation, each with its weight beside it.

- encoder: match the teacher's diffusion-space latents (MSE, or L1: "for the TAESDXL encoder
  I think I just used L1 encoder loss at 256x256", github.com/madebyollin/taesd issue 11);
- decoder: a pixel term, optionally on 8x average-pooled images (TAESD 1.2 kept only "very faint
  low-res MSE" beside the adversarial term), and LPIPS with a real pretrained backbone (TAESD 1.1
  had it "at lower weight than adversarial"; 1.2 dropped it: it "can cause recognizable artifacts
  on faces & eyes").

The adversarial terms live in tinyae.training.adversarial. Terms are returned by name as
(weight, value), so the step sums them and the loop logs them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tinyae.config import LossConfig
from tinyae.evaluation.lpips import lpips_distance

Terms = dict[str, tuple[float, torch.Tensor]]


def distance(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    return F.l1_loss(a.float(), b.float()) if kind == "l1" else F.mse_loss(a.float(), b.float())


class DistillLoss(nn.Module):
    """The reconstruction terms of one student step; the weights come from the recipe."""

    def __init__(self, config: LossConfig):
        super().__init__()
        self.config = config

    def encoder_terms(self, student_latents: torch.Tensor, teacher_latents: torch.Tensor) -> Terms:
        c = self.config
        return {"latent": (c.latent_weight, distance(student_latents, teacher_latents, c.latent))}

    def decoder_terms(self, recon: torch.Tensor, target: torch.Tensor) -> Terms:
        """Per image, or per frame of (B, 3, F, H, W) clips (frames folded into the batch)."""
        c = self.config
        recon, target = as_frames(recon), as_frames(target)
        pooled = (F.avg_pool2d(recon, c.pixel_pool), F.avg_pool2d(target, c.pixel_pool)) if c.pixel_pool > 1 else (
            recon, target)
        terms = {}
        if c.pixel_weight > 0:
            terms["pixel"] = (c.pixel_weight, distance(*pooled, c.pixel))
        if c.lpips_weight > 0:
            terms["lpips"] = (c.lpips_weight, lpips_distance(recon, target, net=c.lpips_net).mean())
        return terms


def as_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, F, H, W) clips -> (B * F, 3, H, W) frames; images pass unchanged."""
    return x.transpose(1, 2).flatten(0, 1) if x.ndim == 5 else x


def weighted_total(terms: Terms) -> torch.Tensor:
    return sum(weight * value for weight, value in terms.values())
