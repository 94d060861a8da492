"""The latent bridge: the donor's layers at the latent boundary, refitted nonlinearly on cached latents.

A linear map folded into one conv cannot carry a new latent space (another channel count, another training) into
the donor's: four channels do not predict TAEF2's 32 linearly (R² 0.1). Converters between latent spaces are
small nonlinear networks (SD-Latent-Interposer). Here the donor's own layers that run at latent resolution are that
network, so the student keeps the donor's layout and every export (TAESD pair, AutoencoderTiny, TinyAutoencoder)
holds it unchanged; an adapter kept in front of the donor's layers would be a layer no client loads.

- Decoder side: the first conv and the blocks of the decoder's first stage learn to turn the teacher's latents into
  the features the donor's same layers make of the donor's latents of the same crops, so the rest of the donor's
  decoder sees what it was trained on.
- Encoder side: the encoder's last block and conv learn to turn the donor's features there into the teacher's
  latents.

Both run at latent resolution only, on latents and features encoded once, so a step costs a fraction of a full
student step. Steps draw random latent crops of half to all of the cached maps' side, because the FLUX.2 layout's
GroupNorm branch normalises over the whole map and must hold at other image sizes (much smaller crops cost fit
quality: R² 0.991 against 0.995 on whole maps). Each side starts from the linear fold and ends no
worse than it: a fit whose error on the whole maps grew is undone.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from tinyae.models.student import Block, Student

logger = logging.getLogger(__name__)

BATCH = 8
MIN_SHARE = 0.5  # the smallest crop a step sees, as a share of the cached maps' side
LR = 3e-4  # measured: 1e-3 undid the fit (worse than the fold), 3e-4 beat 1e-4 at twice the steps


@dataclass
class BridgeFit:
    """One side's fit: which layers, and how much of the target they explain before and after (R² on the maps)."""

    side: str
    layers: tuple[int, int]
    before: float
    after: float

    def describe(self) -> str:
        first, end = self.layers
        return f"{self.side}.layers.{first}-{end - 1} R² {self.before:.3f} -> {self.after:.3f}"


def decoder_span(student: Student) -> tuple[int, int]:
    """The decoder layers that run at latent resolution: its first conv up to the first upsampling."""
    layers = student.decoder.layers
    end = next((i for i, layer in enumerate(layers) if isinstance(layer, nn.Upsample)), len(layers))
    return 0, end


def encoder_span(student: Student) -> tuple[int, int]:
    """The encoder's last block and its last conv (the one that writes the latents)."""
    layers = student.encoder.layers
    blocks = [i for i, layer in enumerate(layers) if isinstance(layer, Block)]
    return (blocks[-1] if blocks else len(layers) - 1), len(layers)


def _r2(module: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    with torch.no_grad():
        error = sum(float(((module(inputs[i:i + BATCH]) - targets[i:i + BATCH]) ** 2).sum())
                    for i in range(0, len(inputs), BATCH))
    variance = float(((targets - targets.mean((0, 2, 3), keepdim=True)) ** 2).sum())
    return 1 - error / max(variance, 1e-12)


def _fit(module: nn.Module, inputs: torch.Tensor, targets: torch.Tensor | None, target_fn, steps: int,
         generator: torch.Generator) -> tuple[float, float]:
    """Adam on random crops of (inputs, targets or target_fn(crop of the donor's inputs)); returns R² before, after."""
    donor_inputs = None
    if targets is None:  # targets made from the donor's inputs on each crop (the GroupNorm branch sees the crop)
        donor_inputs, targets = target_fn
        with torch.no_grad():
            full = torch.cat([targets(donor_inputs[i:i + BATCH]) for i in range(0, len(donor_inputs), BATCH)])
    else:
        full = targets
    before = _r2(module, inputs, full)
    start = copy.deepcopy(module.state_dict())
    scale = float(full.var()) or 1.0
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=LR)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    size = inputs.shape[-1]
    for _ in range(steps):
        side = int(torch.randint(max(1, round(MIN_SHARE * size)), size + 1, (1,), generator=generator))
        picks = torch.randint(0, len(inputs), (BATCH,), generator=generator)
        top = int(torch.randint(0, inputs.shape[-2] - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, size - side + 1, (1,), generator=generator))
        window = (slice(None), slice(None), slice(top, top + side), slice(left, left + side))
        x = inputs[picks][window]
        if donor_inputs is not None:
            with torch.no_grad():
                y = targets(donor_inputs[picks][window])
        else:
            y = full[picks][window]
        loss = ((module(x) - y) ** 2).mean() / scale
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    after = _r2(module, inputs, full)
    if not after >= before:  # never end worse than the linear fold (or not finite)
        module.load_state_dict(start)
        after = before
    return before, after


def fit_bridges(student: Student, donor: Student, images: torch.Tensor, teacher_latents: torch.Tensor,
                donor_latents: torch.Tensor, steps: int, seed: int = 0, sides: tuple[str, ...] = ("encoder", "decoder")
                ) -> list[BridgeFit]:
    """Refit the student's latent-boundary layers (already holding the donor's, with the linear fold) in place.

    `images` are the crops the teacher's latents were encoded from; `donor_latents` the donor's latents that its
    decoder should start from for each crop (tinyae.training.warm_start.donor_targets: of the crop, or of the
    teacher's decode of it, whichever the donor decodes closer to the teacher); `steps` Adam steps per side.
    """
    generator = torch.Generator().manual_seed(seed)
    fits = []
    with torch.enable_grad():
        if "decoder" in sides:
            first, end = decoder_span(student)
            ours = student.decoder.layers[first:end]
            theirs = donor.decoder.layers[first:end]
            clamp = _SoftClamp()
            module = nn.Sequential(clamp, ours)
            target = nn.Sequential(clamp, theirs).requires_grad_(False)
            before, after = _fit(module, teacher_latents, None, (donor_latents, target), steps, generator)
            fits.append(BridgeFit("decoder", (first, end), before, after))
        if "encoder" in sides:
            first, end = encoder_span(student)
            with torch.no_grad():
                features = torch.cat([student.encoder.layers[:first](images[i:i + BATCH].add(1).div(2))
                                      for i in range(0, len(images), BATCH)])
            before, after = _fit(student.encoder.layers[first:end], features, teacher_latents, None, steps, generator)
            fits.append(BridgeFit("encoder", (first, end), before, after))
    student.zero_grad(set_to_none=True)
    return fits


class _SoftClamp(nn.Module):
    """The decoder's soft clamp, which comes before its first conv (TinyDecoder.forward)."""

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.tanh(latents / 3) * 3
