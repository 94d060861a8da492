"""A "fine-tuned VAE" teacher derived from a published TAE: the case a warm start is for, reproducible offline.

A user's VAE often is a published one with its latent space changed and its decoder fine-tuned to their
look. This builds one from a donor (the shipped TAEF2 by default), from a seed: its latent space is an
invertible linear transform of the donor's (a random orthogonal channel mix times per-channel scales, plus
a per-channel shift; condition number at most `max_scale / min_scale`), folded into the encoder's last conv
and the decoder's first conv; then its decoder is fine-tuned for a few hundred steps toward another look
(`grade`: a warm colour balance and a contrast curve applied to the target photos). The result is a
TinyAutoencoder folder that `--teacher` takes, with `derived.json` saying how it was made.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tinyae.config import MAX_BATCH, MAX_RESOLUTION, MIN_RESOLUTION, check_range
from tinyae.data.images import list_images
from tinyae.data.source import make_train_loader
from tinyae.errors import ConfigError
from tinyae.models.student import Student
from tinyae.training.warm_start import LatentMap, fold_into_decoder, fold_into_encoder, load_donor
from tinyae.utils.atomic import atomic_file

logger = logging.getLogger(__name__)


def random_space(channels: int, seed: int, min_scale: float = 0.7, max_scale: float = 1.4,
                 shift: float = 0.2) -> LatentMap:
    """new = weight @ old + bias: an orthogonal mix scaled per channel, and a shift; invertible by construction."""
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(channels, channels, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))  # a uniformly random orthogonal matrix
    scales = min_scale + (max_scale - min_scale) * torch.rand(channels, generator=gen, dtype=torch.float64)
    weight = scales[:, None] * q
    bias = shift * torch.randn(channels, generator=gen, dtype=torch.float64)
    return LatentMap(weight.float(), bias.float(), 1.0)


def inverse(latent_map: LatentMap) -> LatentMap:
    weight = torch.linalg.inv(latent_map.weight.double())
    return LatentMap(weight.float(), (-weight @ latent_map.bias.double()).float(), 1.0)


def transform_space(student: Student, latent_map: LatentMap) -> Student:
    """The same autoencoder writing and reading `latent_map`(its latents) (exact but for the decoder's soft clamp)."""
    first, last = student.decoder.layers[0], student.encoder.layers[-1]
    fold_into_encoder(last, _copy(last), latent_map)
    fold_into_decoder(first, _copy(first), inverse(latent_map))
    return student


def _copy(conv: torch.nn.Conv2d) -> torch.nn.Conv2d:
    out = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding)
    out.load_state_dict(conv.state_dict())
    return out


def grade(images: torch.Tensor, warmth: float = 0.08, contrast: float = 1.25) -> torch.Tensor:
    """Another look for images in [-1, 1]: warmer (red up, blue down) and more contrast (a smooth S-curve)."""
    x = (images + 1) / 2
    x = x * torch.tensor([1 + warmth, 1.0, 1 - warmth], device=x.device).view(1, 3, 1, 1)
    x = x.clamp(0, 1)
    curved = 0.5 + torch.tanh(contrast * 2 * (x - 0.5)) / (2 * torch.tanh(torch.tensor(contrast)))
    return (curved.clamp(0, 1) * 2 - 1)


def check_derive_arguments(steps: int, resolution: int, batch_size: int, lr: float, seed: int) -> None:
    """Refuse, before the donor loads or a crop is drawn, what would record a run that did not happen (steps -3)
    or allocate more than the machine has (a 100000 px crop)."""
    check_range("--steps", steps)
    check_range("--resolution", resolution, low=MIN_RESOLUTION, high=MAX_RESOLUTION, multiple=8,
                why=" (the donor's latents are 1/8 of it)")
    check_range("--batch-size", batch_size, high=MAX_BATCH)
    check_range("--seed", seed, low=0)
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"--lr must be a positive finite number, got {lr}.")


def derive_teacher(photos: str | Path, out: str | Path, donor: str = "taef2", seed: int = 0, steps: int = 300,
                   resolution: int = 128, batch_size: int = 4, lr: float = 1e-4, warmup: int = 20,
                   overwrite: bool = False) -> dict:
    """Write the derived teacher to `out` and return its record (derived.json)."""
    check_derive_arguments(steps, resolution, batch_size, lr, seed)
    if Path(out).exists() and not overwrite:
        raise ConfigError(f"'{out}' already exists: pass --overwrite to replace it, or choose another --out.")
    files = list_images(photos)  # refuses a folder without images
    started = (time.perf_counter(), time.process_time())
    torch.manual_seed(seed)
    model = load_donor(donor, "--donor")
    if resolution % model.downscale:
        raise ConfigError(f"--resolution must be a multiple of the donor's downscale factor {model.downscale}, got "
                          f"{resolution}.")
    space = random_space(model.latent_channels, seed)
    transform_space(model, space)
    model.encoder.requires_grad_(False)
    params = list(model.decoder.parameters())
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(warmup, 1)))
    losses = []
    loader = make_train_loader(files, resolution, batch_size, seed, num_steps=steps)
    for step, batch in enumerate(loader):
        images = batch["images"]
        with torch.no_grad():
            latents = model.encode(images)
        recon = model.decode(latents)
        target = grade(images)
        loss = F.l1_loss(recon, target) + F.mse_loss(recon, target)
        if not torch.isfinite(loss):
            raise ConfigError(f"The derived teacher's loss turned non-finite at step {step}; lower --lr.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0:
            logger.info("derive-teacher step %d/%d: loss %.4f", step + 1, steps, sum(losses[-50:]) / 50)
    record = {"donor": donor, "seed": seed, "steps": steps, "resolution": resolution, "batch_size": batch_size,
              "lr": lr, "warmup": warmup, "photos": len(files), "final_loss": sum(losses[-20:]) / max(len(losses[-20:]), 1),
              "latent_map": {"weight_cond": float(torch.linalg.cond(space.weight)), "shift_std": float(space.bias.std())},
              "look": "grade(): warmth 0.08, contrast 1.25",
              "time": {"wall_s": time.perf_counter() - started[0], "cpu_s": time.process_time() - started[1]}}
    model.save_pretrained(out, overwrite=overwrite, family=model.family or "flux2")
    atomic_file(Path(out) / "derived.json", lambda path: path.write_text(json.dumps(record, indent=2) + "\n"))
    return record
