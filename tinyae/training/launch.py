"""How a run is launched: its precision, the global batch its processes make, and fast small steps on GPUs.

Precision follows the ecosystem: `accelerate launch --mixed_precision` (or `accelerate config`) decides, as it does
for diffusers' scripts, and the recipe's `auto` takes it. A recipe value that disagrees with the launcher's is
refused rather than one of them silently ignored (accelerate itself lets the value in the code win). fp16 is
refused: the student's and the discriminator's optimizers would share one loss scaler, and the adaptive and
normalized adversarial weights take `autograd.grad` of unscaled fp16 graphs; bf16 needs neither.

`train.batch_size` is per process, as `--train_batch_size` in accelerate's and diffusers' scripts: one optimizer
step sees batch_size x processes x grad_accum images, and the learning rate is used as set whatever that is.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass

import torch

from tinyae.config import FP16_REFUSAL, Recipe
from tinyae.errors import ConfigError

TRAINED_PRECISIONS = ("no", "bf16")
LAUNCHER_PRECISION = "ACCELERATE_MIXED_PRECISION"  # what `accelerate launch` and `accelerate config` set


def launcher_precision() -> str | None:
    """The launcher's precision (None when the process was not started by `accelerate launch`)."""
    value = os.environ.get(LAUNCHER_PRECISION, "").strip().lower()
    return value or None


def choose_precision(setting: str, launcher: str | None) -> str:
    """The precision a run trains in: the recipe's `auto` takes the launcher's ("no" without one); an explicit
    recipe value must agree with the launcher's."""
    if launcher == "fp16":
        reason = FP16_REFUSAL.split(": ", 1)[1]
        raise ConfigError(f"accelerate launch --mixed_precision fp16 is not supported: {reason}.")
    if launcher is not None and launcher not in TRAINED_PRECISIONS:
        raise ConfigError(f"accelerate launch --mixed_precision {launcher} is not a precision tinyae trains in; "
                          "launch with --mixed_precision bf16 or no.")
    if setting == "fp16":
        raise ConfigError(f"{FP16_REFUSAL}.")
    if setting == "auto":
        return launcher or "no"
    if launcher is not None and launcher != setting:
        raise ConfigError(f"train.mixed_precision is {setting} but the launcher says {launcher} (accelerate launch "
                          "--mixed_precision or accelerate config); pass --train.mixed_precision auto to train in "
                          f"the launcher's, or launch with --mixed_precision {setting}.")
    return setting


def with_precision_used(recipe: Recipe) -> Recipe:
    """`recipe` with the precision this process trains in, as recipe.json records it."""
    used = choose_precision(recipe.train.mixed_precision, launcher_precision())
    return dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, mixed_precision=used))


@dataclass
class GlobalBatch:
    """Images per optimizer step: per process x processes x accumulation steps."""

    per_process: int
    processes: int
    grad_accum: int

    @property
    def images(self) -> int:
        return self.per_process * self.processes * self.grad_accum

    def to_dict(self) -> dict:
        return asdict(self) | {"global": self.images}

    def describe(self, lr: float) -> str:
        return (f"Global batch {self.images} images per optimizer step ({self.per_process} per process x "
                f"{self.processes} process{'es' if self.processes > 1 else ''} x {self.grad_accum} accumulation "
                f"step{'s' if self.grad_accum > 1 else ''}); learning rate {lr:g} as set, not scaled with the batch.")


def optimizer_flags(device: torch.device) -> dict:
    """One kernel for all parameters instead of one per tensor: fused on CUDA, foreach elsewhere. Small steps
    (the 96 px phase) are bound by kernel launches."""
    cuda = torch.device(device).type == "cuda"
    return {"fused": True, "foreach": None} if cuda else {"foreach": True, "fused": None}


def speed_up_fixed_shapes(device: torch.device) -> None:
    """cuDNN picks the fastest convolution per shape once; crops have one shape per phase. On CUDA only."""
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True
