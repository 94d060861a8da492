"""Multiply-accumulates of a model's encode/decode, counted without running it for real.

The model is copied to PyTorch's `meta` device (shapes, no data) and run under
`torch.utils.flop_counter.FlopCounterMode`, which counts convolutions, matrix products
and attention, the ops that dominate these networks (normalisations and activations
are not counted). A MAC is half a counted FLOP. Counting the SD VAE's decode at 512 px
this way takes a fraction of a second and no memory for activations.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_macs(fn: Callable[..., object], *inputs: torch.Tensor) -> int:
    """MACs of `fn(*inputs)` (run once, as given: pass meta tensors to a meta model to make it free)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*inputs)
    return counter.get_total_flops() // 2


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` on the meta device: same shapes, no storage."""
    return copy.deepcopy(model).to("meta")


def op_macs(meta_model: nn.Module, op: str, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> int:
    """MACs of `meta_model.<op>(x)` for an input of `shape`; `meta_model` comes from `meta_copy`."""
    return count_macs(getattr(meta_model, op), torch.empty(*shape, device="meta", dtype=dtype))


def macs_by_resolution(layers: nn.Sequential, x: torch.Tensor) -> dict[int, int]:
    """{output width in px: MACs} of a sequence of layers run in order: where a stage-wise network spends its time."""
    levels: dict[int, int] = {}
    for layer in layers:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            x = layer(x)
        levels[x.shape[-1]] = levels.get(x.shape[-1], 0) + counter.get_total_flops() // 2
    return levels
