"""Latent spaces: how a family's raw VAE latents become the latents its diffusion model sees.

A student reads and writes one space per family: the one the family's published tiny decoder
reads, which is the diffusion model's own space in the VAE's spatial layout. It then decodes a
pipeline's latents as they are, only un-packed where a pipeline packs them into tokens
(`tinyae.shipping.preview`). Each space maps raw VAE latents `raw` (B, C, h, w) to that space
and back, and says so here with the public code it was read from:

- `ScalarSpace`, z = (raw - shift) * scale: SD 1.x/2.x (0.18215), SDXL (0.13025), SD3 (1.5305,
  0.0609), FLUX.1 (0.3611, 0.1159) and Sana's DC-AE (0.41407, no shift). diffusers' pipelines
  decode `latents / scaling_factor (+ shift_factor)` (StableDiffusionPipeline, SanaPipeline:
  `vae.decode(latents / vae.config.scaling_factor)`); ComfyUI's `latent_formats.py` applies the
  same `process_in` (SD15, SDXL, SD3, Flux); TAESD "uses scale_factor 1" (madebyollin/taesd
  README), i.e. reads these scaled latents, and taesana's encoder writes latents of std 0.94 on
  photos (raw DC-AE latents have std ~1/0.41).
- `PerChannelSpace`, z = (raw - mean_c) * scale / std_c: Qwen-Image and Wan 2.1 (scale 1, mean and
  std from the VAE config's `latents_mean` / `latents_std`). QwenImagePipeline decodes
  `latents / (1 / latents_std) + latents_mean`; ComfyUI's Wan21 format has the same `process_in`;
  TAEW2.1 "encodes / decodes exactly what diffusion models use" (madebyollin/taehv README). SDXL
  fine-tunes whose config carries `latents_mean` / `latents_std` use it with their scaling_factor
  (StableDiffusionXLPipeline's `latents * latents_std / scaling_factor + latents_mean`).
- `PatchNormSpace`, z = unpatchify((patchify(raw) - bn_mean) / sqrt(bn_var + eps)): FLUX.2. Its
  transformer sees 2x2-patchified 128-channel latents normalised by the VAE's batch-norm running
  statistics (`Flux2Pipeline._encode_vae_image`, and the inverse before `vae.decode`); TAEF2 reads
  that normalised latent unpatchified to 32 channels at 1/8 scale: its author runs TAEF2 inside
  Flux2KleinPipeline as `pipe.vae` with an identity `bn` (madebyollin/taesd issue #35), and
  ComfyUI's Flux2 format applies no `process_in` and previews by unpatchifying 128 -> 32 channels.
  Decoding the denormalised latent instead is a known preview bug (darker, oversaturated).

`fitted(estimate)` returns a space of the same kind with estimated numbers (tinyae.evaluation.factors
estimates over `stats_view(raw)`, the layout the space normalises in).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch

from tinyae.errors import ConfigError

SPACES: dict[str, type[LatentSpace]] = {}


def _floats(values: Sequence[float] | torch.Tensor) -> tuple[float, ...]:
    if isinstance(values, torch.Tensor):
        values = values.detach().double().flatten().tolist()
    return tuple(float(v) for v in values)


def _channel_view(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """A (1, C, 1, 1) float64 tensor on `like`'s device, to broadcast over (B, C, h, w) latents (read-only)."""
    return _device_view(tuple(values), like.device)


@functools.lru_cache(maxsize=64)
def _device_view(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    # Made once per device: building it from Python floats is a blocking host-to-device copy, which on a GPU
    # would stall every teacher encode of a per-channel or FLUX.2 space until the queued work had finished.
    return torch.tensor(values, dtype=torch.float64, device=device).view(1, -1, 1, 1)


def patchify(latents: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """(B, C, h, w) -> (B, C*p*p, h/p, w/p), channel index c*p*p + dy*p + dx (FLUX.2's `_patchify_latents`)."""
    b, c, h, w = latents.shape
    if h % patch or w % patch:
        raise ValueError(f"Latents of size {h}x{w} do not split into {patch}x{patch} patches.")
    x = latents.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * patch * patch, h // patch, w // patch)


def unpatchify(latents: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """Inverse of `patchify`."""
    b, cp, h, w = latents.shape
    x = latents.reshape(b, cp // (patch * patch), patch, patch, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, cp // (patch * patch), h * patch, w * patch)


@dataclass(frozen=True)
class LatentSpace:
    """A bijection between raw VAE latents and the space students learn; subclasses register by `kind`."""

    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        SPACES[cls.kind] = cls

    def from_raw(self, raw: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def to_raw(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def stats_view(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw latents in the layout whose channels this space normalises (FLUX.2: patchified)."""
        return raw

    def fitted(self, estimate) -> "LatentSpace":
        """The same convention with numbers from a `FactorEstimate` over `stats_view` of raw latents."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"kind": self.kind, **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}}

    @staticmethod
    def from_dict(data: dict) -> "LatentSpace":
        fields = dict(data)
        kind = fields.pop("kind", None)
        if kind not in SPACES:
            raise ConfigError(f"Unknown latent space kind {kind!r}; known: {', '.join(SPACES)}.")
        return SPACES[kind](**fields)


@dataclass(frozen=True)
class ScalarSpace(LatentSpace):
    """z = (raw - shift_factor) * scaling_factor (SD, SDXL, SD3, FLUX.1, DC-AE; 1/0 for tiny autoencoders)."""

    kind: ClassVar[str] = "scalar"
    scaling_factor: float = 1.0
    shift_factor: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scaling_factor", float(self.scaling_factor))
        object.__setattr__(self, "shift_factor", float(self.shift_factor))
        if not math.isfinite(self.scaling_factor) or self.scaling_factor == 0:
            raise ConfigError(f"scaling_factor must be a finite non-zero number, got {self.scaling_factor}.")

    def from_raw(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw.float() - self.shift_factor) * self.scaling_factor

    def to_raw(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.float() / self.scaling_factor + self.shift_factor

    def fitted(self, estimate) -> "ScalarSpace":
        return ScalarSpace(estimate.scaling_factor, estimate.shift_factor)

    def describe(self) -> str:
        return f"(raw - {self.shift_factor:g}) * {self.scaling_factor:g}"


@dataclass(frozen=True)
class PerChannelSpace(LatentSpace):
    """z = (raw - mean_c) * scaling_factor / std_c (Qwen-Image, Wan 2.1: scaling_factor 1)."""

    kind: ClassVar[str] = "per-channel"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    scaling_factor: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", _floats(self.mean))
        object.__setattr__(self, "std", _floats(self.std))
        object.__setattr__(self, "scaling_factor", float(self.scaling_factor))
        if not self.mean or len(self.mean) != len(self.std):
            raise ConfigError(f"A per-channel latent space needs one mean and one std per channel, got "
                              f"{len(self.mean)} means and {len(self.std)} stds.")
        if min(self.std) <= 0:
            raise ConfigError("Per-channel latent stds must be positive.")

    def _check(self, latents: torch.Tensor) -> None:
        if latents.shape[1] != len(self.mean):
            raise ValueError(f"Latents have {latents.shape[1]} channels; this space describes {len(self.mean)}.")

    def from_raw(self, raw: torch.Tensor) -> torch.Tensor:
        self._check(raw)
        z = (raw.double() - _channel_view(self.mean, raw)) * self.scaling_factor / _channel_view(self.std, raw)
        return z.float()

    def to_raw(self, latents: torch.Tensor) -> torch.Tensor:
        self._check(latents)
        raw = latents.double() * _channel_view(self.std, latents) / self.scaling_factor + _channel_view(self.mean, latents)
        return raw.float()

    def fitted(self, estimate) -> "PerChannelSpace":
        return PerChannelSpace(estimate.per_channel_shift, [1 / s for s in estimate.per_channel_scaling],
                               self.scaling_factor)

    def describe(self) -> str:
        scale = f" * {self.scaling_factor:g}" if self.scaling_factor != 1 else ""
        return f"(raw - mean_c){scale} / std_c over {len(self.mean)} channels"


@dataclass(frozen=True)
class PatchNormSpace(LatentSpace):
    """z = unpatchify((patchify(raw) - mean) / sqrt(var + eps)): FLUX.2's batch-norm over 2x2 patches."""

    kind: ClassVar[str] = "patch-norm"
    mean: tuple[float, ...] = ()
    var: tuple[float, ...] = ()
    eps: float = 0.0
    patch: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", _floats(self.mean))
        object.__setattr__(self, "var", _floats(self.var))
        object.__setattr__(self, "eps", float(self.eps))
        object.__setattr__(self, "patch", int(self.patch))
        if not self.mean or len(self.mean) != len(self.var) or len(self.mean) % (self.patch**2):
            raise ConfigError(f"A patch-norm latent space needs one mean and one variance per patchified channel "
                              f"(a multiple of {self.patch**2}), got {len(self.mean)} and {len(self.var)}.")
        if min(v + self.eps for v in self.var) <= 0:
            raise ConfigError("Patch-norm variances plus eps must be positive.")

    @classmethod
    def of_batch_norm(cls, bn: torch.nn.Module, patch: int = 2) -> "PatchNormSpace":
        """The space of a VAE's `bn` (AutoencoderKLFlux2.bn: BatchNorm2d over patchified channels)."""
        return cls(bn.running_mean, bn.running_var, bn.eps, patch)

    @property
    def latent_channels(self) -> int:
        return len(self.mean) // self.patch**2

    def _std(self, like: torch.Tensor) -> torch.Tensor:
        return (_channel_view(self.var, like) + self.eps).sqrt()

    def stats_view(self, raw: torch.Tensor) -> torch.Tensor:
        return patchify(raw, self.patch)

    def from_raw(self, raw: torch.Tensor) -> torch.Tensor:
        x = patchify(raw.double(), self.patch)
        return unpatchify((x - _channel_view(self.mean, x)) / self._std(x), self.patch).float()

    def to_raw(self, latents: torch.Tensor) -> torch.Tensor:
        x = patchify(latents.double(), self.patch)
        return unpatchify(x * self._std(x) + _channel_view(self.mean, x), self.patch).float()

    def fitted(self, estimate) -> "PatchNormSpace":
        return PatchNormSpace(estimate.per_channel_shift, [1 / s**2 for s in estimate.per_channel_scaling], 0.0,
                              self.patch)

    def describe(self) -> str:
        return (f"unpatchify((patchify{self.patch}x{self.patch}(raw) - mean) / sqrt(var + {self.eps:g})) over "
                f"{len(self.mean)} patchified channels")


IDENTITY = ScalarSpace(1.0, 0.0)  # tiny autoencoders already write the space they were distilled in
