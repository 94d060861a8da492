"""Whether a student survives fp16 and bf16: its largest activations, and its outputs in each dtype.

fp16 tops out at 65504, so a student whose weights fit fp16 (tinyae.utils.weights refuses
those that do not) can still overflow inside: one activation past 65504 becomes inf and
the decoded image NaN. bf16 has fp32's range but 8 bits of mantissa, so it never overflows
and only blurs. `low_precision_outputs` runs both halves of a student in fp32 (recording the
largest |value| any submodule outputs, and where) and in each low-precision dtype.

On CUDA the low-precision run is native. On a CPU it is emulated, because PyTorch's fp16
convolutions there are reference kernels (about 150x slower than fp32 on this project's
machine): weights and inputs are rounded to the dtype and so is every submodule's output,
while each layer computes in fp32 inside, as GPU fp16 convolutions accumulate in fp32.
Overflow is exact under emulation (a rounded value past 65504 is inf); the rest agrees
with native fp16 to within fp16's rounding (tests/test_precision.py).
"""

from __future__ import annotations

import copy
import math
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from tinyae.data.images import list_images, load_eval_images, sample_photos

FP16_MAX = float(torch.finfo(torch.float16).max)  # 65504
LOW_PRECISION = {"fp16": torch.float16, "bf16": torch.bfloat16}
PARTS = ("encoder", "decoder")


@dataclass
class Peak:
    """The largest |value| a module's submodules output while watched, and the submodule's name."""

    value: float = 0.0
    where: str = ""


@contextmanager
def watch_activations(model: nn.Module, prefix: str = "") -> Iterator[Peak]:
    """Track the largest finite-or-not |output| of every submodule of `model` inside the block."""
    peak = Peak()

    def hook(name: str):
        def record(module: nn.Module, inputs, output) -> None:
            if isinstance(output, torch.Tensor) and output.is_floating_point() and output.numel():
                value = output.detach().abs().max().item()
                if not math.isnan(peak.value) and not value <= peak.value:  # inf and NaN are the worst
                    peak.value, peak.where = value, name
        return record

    handles = [m.register_forward_hook(hook(f"{prefix}{name}")) for name, m in model.named_modules() if name]
    try:
        yield peak
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _rounding_outputs(model: nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """Every leaf module's output is rounded to `dtype` (and kept in the model's dtype)."""
    def round_output(module: nn.Module, inputs, output):
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            return output.to(dtype).to(output.dtype)
        return output

    handles = [m.register_forward_hook(round_output) for m in model.modules() if not list(m.children())]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def in_dtype(part: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`part(x)` computed in `dtype` (natively on CUDA, emulated elsewhere), returned as float32."""
    param = next(part.parameters())
    low = copy.deepcopy(part)
    if param.device.type == "cuda":
        return low.to(dtype)(x.to(param.device, dtype)).float()
    with torch.no_grad():
        for p in low.parameters():
            p.copy_(p.to(dtype).to(p.dtype))
    with _rounding_outputs(low, dtype):
        return low(x.to(param.device, dtype).to(param.dtype)).float()


def can_check(model: nn.Module) -> bool:
    """Whether `model` has the `encoder` and `decoder` modules the check runs (a Student or a diffusers VAE)."""
    return all(isinstance(getattr(model, part, None), nn.Module) for part in PARTS)


@torch.no_grad()
def low_precision_outputs(student: nn.Module, images: torch.Tensor, latents: torch.Tensor | None = None,
                          dtypes: tuple[str, ...] = tuple(LOW_PRECISION)) -> dict[str, dict]:
    """Both halves of `student` in fp32 and in each of `dtypes`, with the largest fp32 activation of each.

    The encoder gets `images` (in [-1, 1]); the decoder gets `latents` (default: the student's own
    latents of `images`; pass the teacher's to see what a pipeline would decode). Returns
    {"encoder": {"peak": Peak, "fp32": tensor, "fp16": tensor, "bf16": tensor}, "decoder": {...}}.
    """
    device, dtype = next(student.parameters()).device, next(student.parameters()).dtype
    inputs = {"encoder": images.to(device, dtype)}
    out = {}
    for part in PARTS:
        module = getattr(student, part)
        with watch_activations(module, f"{part}.") as peak:
            fp32 = module(inputs[part]).float()
        if part == "encoder":
            inputs["decoder"] = (fp32 if latents is None else latents).to(device, dtype)
        out[part] = {"peak": peak, "fp32": fp32,
                     **{name: in_dtype(module, inputs[part], LOW_PRECISION[name]) for name in dtypes}}
    return out


def fp16_overflow(outputs: dict[str, dict]) -> str | None:
    """A sentence saying where fp16 overflows in `low_precision_outputs`' result, or None if it does not."""
    for part in PARTS:
        peak = outputs[part]["peak"]
        nonfinite = "fp16" in outputs[part] and not torch.isfinite(outputs[part]["fp16"]).all()
        if not peak.value <= FP16_MAX or nonfinite:
            return (f"the student's {part} reaches |activation| {peak.value:.4g} in {peak.where} (fp16 tops out at "
                    f"{FP16_MAX:.0f}), so its fp16 {part} outputs inf/NaN")
    return None


def sample_images(size: int = 128) -> torch.Tensor:
    """scikit-image's photos (they ship with the package) as centre crops in [-1, 1]."""
    with tempfile.TemporaryDirectory(prefix="tinyae-photos-") as folder:
        return load_eval_images(list_images(sample_photos(folder)), size)


def warn_if_fp16_overflows(student: nn.Module, images: torch.Tensor | None = None) -> str | None:
    """Warn (and return the warning) when `student` overflows fp16 on `images` (default: the sample photos)."""
    images = sample_images(max(128, 8 * student.downscale)) if images is None else images
    problem = fp16_overflow(low_precision_outputs(student, images, dtypes=("fp16",)))
    if problem is None:
        return None
    message = f"fp16 overflow: {problem}. Use the fp32 export, or bf16 (fp32's range), for this student."
    warnings.warn(message, stacklevel=2)
    return message
