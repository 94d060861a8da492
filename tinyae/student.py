"""The student: a TAESD-style deterministic encoder/decoder in diffusion-space latents.

Its state_dict is, key for key, the one of diffusers' `AutoencoderTiny` built
from `Student.diffusers_config()`, so an export is a plain save and the result
drops into any pipeline as `pipe.vae`. Images are in [-1, 1] (diffusers'
convention); latents are what the diffusion model sees (already scaled).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.models.activations import get_activation
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential

from tinyae.config import StudentConfig


def conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Block(nn.Module):
    """Three 3x3 convs with a residual; `conv.0/2/4` keys as in diffusers' AutoencoderTinyBlock."""

    def __init__(self, width: int, act_fn: str):
        super().__init__()
        act = get_activation(act_fn)
        self.conv = nn.Sequential(conv(width, width), act, conv(width, width), act, conv(width, width))
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


class _Checkpointable(nn.Module):
    gradient_checkpointing = False

    def run_layers(self, x: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint_sequential(self.layers, 4, x, use_reentrant=False)
        return self.layers(x)


class TinyEncoder(_Checkpointable):
    """Image in [-1, 1] -> latents; one stride-2 conv per stage after the first."""

    def __init__(self, latent_channels: int, width: int, blocks: list[int], act_fn: str = "relu"):
        super().__init__()
        layers: list[nn.Module] = []
        for stage, n_blocks in enumerate(blocks):
            layers.append(conv(3, width) if stage == 0 else conv(width, width, stride=2, bias=False))
            layers += [Block(width, act_fn) for _ in range(n_blocks)]
        layers.append(conv(width, latent_channels))
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # The rescale sits outside the checkpointed layers on purpose: diffusers skips it there.
        return self.run_layers(images.add(1).div(2))


class TinyDecoder(_Checkpointable):
    """Latents -> image in [-1, 1]; a soft clamp (tanh) keeps wild latents from exploding."""

    def __init__(
        self, latent_channels: int, width: int, blocks: list[int], act_fn: str = "relu", upsample_fn: str = "nearest"
    ):
        super().__init__()
        layers: list[nn.Module] = [conv(latent_channels, width), get_activation(act_fn)]
        for stage, n_blocks in enumerate(blocks):
            last = stage == len(blocks) - 1
            layers += [Block(width, act_fn) for _ in range(n_blocks)]
            if not last:
                layers.append(nn.Upsample(scale_factor=2, mode=upsample_fn))
            layers.append(conv(width, 3 if last else width, bias=last))
        self.layers = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.run_layers(torch.tanh(latents / 3) * 3).mul(2).sub(1)


class Student(nn.Module):
    """Encoder + decoder pair with diffusers' AutoencoderTiny key layout."""

    def __init__(self, config: StudentConfig | None = None, **overrides):
        super().__init__()
        config = config or StudentConfig(**overrides)
        if config.latent_channels is None:
            raise ValueError("StudentConfig.latent_channels is None: set it, or build the student from a teacher.")
        self.config = config
        self.encoder = TinyEncoder(config.latent_channels, config.encoder_width, config.encoder_blocks, config.act_fn)
        self.decoder = TinyDecoder(
            config.latent_channels, config.decoder_width, config.decoder_blocks, config.act_fn, config.upsample_fn
        )
        self.set_gradient_checkpointing(config.gradient_checkpointing)

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.config.encoder_blocks) - 1)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.encoder.gradient_checkpointing = enabled
        self.decoder.gradient_checkpointing = enabled

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))

    def diffusers_config(self) -> dict:
        """AutoencoderTiny constructor arguments; factors are 1/0 because latents are already scaled."""
        c = self.config
        n = len(c.encoder_blocks)
        return {
            "in_channels": 3,
            "out_channels": 3,
            "encoder_block_out_channels": [c.encoder_width] * n,
            "decoder_block_out_channels": [c.decoder_width] * n,
            "act_fn": c.act_fn,
            "upsample_fn": c.upsample_fn,
            "latent_channels": c.latent_channels,
            "upsampling_scaling_factor": 2,
            "num_encoder_blocks": list(c.encoder_blocks),
            "num_decoder_blocks": list(c.decoder_blocks),
            "latent_magnitude": 3,
            "latent_shift": 0.5,
            "force_upcast": False,
            "scaling_factor": 1.0,
            "shift_factor": 0.0,
        }

    @classmethod
    def config_from_diffusers(cls, cfg: dict) -> StudentConfig:
        """Inverse of `diffusers_config`; refuses configs tinyae cannot represent."""
        enc, dec = cfg.get("encoder_block_out_channels", [64] * 4), cfg.get("decoder_block_out_channels", [64] * 4)
        if len(set(enc)) != 1 or len(set(dec)) != 1:
            raise ValueError(f"Per-stage widths {enc}/{dec} are not supported: AutoencoderTiny needs one width each.")
        if cfg.get("upsampling_scaling_factor", 2) != 2 or cfg.get("in_channels", 3) != 3:
            raise ValueError("Only 3-channel images and 2x upsampling are supported.")
        return StudentConfig(
            latent_channels=cfg.get("latent_channels", 4),
            encoder_width=enc[0],
            decoder_width=dec[0],
            encoder_blocks=list(cfg.get("num_encoder_blocks", [1, 3, 3, 3])),
            decoder_blocks=list(cfg.get("num_decoder_blocks", [3, 3, 3, 1])),
            act_fn=cfg.get("act_fn", "relu"),
            upsample_fn=cfg.get("upsample_fn", "nearest"),
        )

    def to_diffusers(self):
        """A diffusers AutoencoderTiny holding a copy of these weights."""
        from diffusers import AutoencoderTiny

        model = AutoencoderTiny(**self.diffusers_config())
        model.load_state_dict(self.state_dict(), strict=True)
        return model.to(next(self.parameters()).dtype)

    def save_pretrained(self, directory: str | Path, overwrite: bool = False, dtype: torch.dtype | None = None) -> Path:
        from tinyae.export import export_diffusers

        return export_diffusers(self, directory, overwrite=overwrite, dtype=dtype)

    @classmethod
    def from_pretrained(cls, path: str | Path, family: str | None = None) -> "Student":
        """Load an AutoencoderTiny folder, a TAESD pair, a checkpoint or a Hub repo (tinyae.formats.load_student)."""
        from tinyae.formats import load_student

        return load_student(path, family)
