"""The one table of dtype names used by recipes, command lines and file formats."""

from __future__ import annotations

from typing import Literal

import torch

DTypeName = Literal["fp32", "fp16", "bf16"]
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# What weight files are written in: ComfyUI, Forge and diffusers' `variant="fp16"` read these two.
EXPORT_DTYPES = ("fp32", "fp16")


def dtype_name(dtype: torch.dtype) -> str:
    """torch.float16 -> 'fp16' (the inverse of DTYPES)."""
    return next(name for name, value in DTYPES.items() if value == dtype)
