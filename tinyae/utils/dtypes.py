"""The one table of dtype names used by recipes, command lines and file formats."""

from __future__ import annotations

from typing import Literal

import torch

DTypeName = Literal["fp32", "fp16", "bf16"]
TeacherDType = Literal["auto", "fp32", "fp16", "bf16"]  # auto: `frozen_dtype` picks
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# What weight files are written in: ComfyUI, Forge and diffusers' `variant="fp16"` read these two.
EXPORT_DTYPES = ("fp32", "fp16")


def dtype_name(dtype: torch.dtype) -> str:
    """torch.float16 -> 'fp16' (the inverse of DTYPES)."""
    return next(name for name, value in DTYPES.items() if value == dtype)


def frozen_dtype(device: str | torch.device, fp16_safe: bool) -> str:
    """The dtype a frozen network (a teacher) runs in under `teacher.dtype auto`.

    On a GPU, half precision: it halves the weights' memory and runs on the tensor cores (an
    fp32 teacher encode costs a 1024 px step more than the student's whole update). fp16 where
    the network is known not to overflow it (SDXL's original VAE does, hence madebyollin's
    fp16-fix), else bf16, which has fp32's range (the precision FLUX, SD3, Sana, Qwen-Image and
    Wan ship and run their VAEs in), else fp32 on GPUs without bf16. On a CPU, fp32: its
    half-precision kernels are slower than fp32 there and memory is not what is short.
    """
    if torch.device(device).type != "cuda":
        return "fp32"
    if fp16_safe:
        return "fp16"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
