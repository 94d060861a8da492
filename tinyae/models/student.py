"""The student: a TAESD-style deterministic encoder/decoder in diffusion-space latents.

Its state_dict is, key for key, the one of diffusers' `AutoencoderTiny` built
from `Student.diffusers_config()`, so an export is a plain save and the result
drops into any pipeline as `pipe.vae`. Images are in [-1, 1] (diffusers'
convention); latents are what the diffusion model sees (already scaled).
"""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
import torch
from diffusers.models.activations import get_activation
from safetensors.torch import save_file
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential

from tinyae.config import StudentConfig
from tinyae.errors import ExportError
from tinyae.utils.atomic import atomic_folder
from tinyae.utils.hub_access import fetch_snapshot, looks_like_repo_id
from tinyae.utils.weights import cast_state, read_weights

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
FP16_WEIGHTS_NAME = "diffusion_pytorch_model.fp16.safetensors"
WEIGHTS_NAMES = (WEIGHTS_NAME, FP16_WEIGHTS_NAME, "diffusion_pytorch_model.bin")  # the order they are read in


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
        model = diffusers.AutoencoderTiny(**self.diffusers_config())
        model.load_state_dict(self.state_dict(), strict=True)
        # nn.Module.to: diffusers' ModelMixin.to warns on every dtype cast, needed or not.
        return nn.Module.to(model, next(self.parameters()).dtype)

    def load_weights(self, state: dict[str, torch.Tensor], source: str) -> "Student":
        """Load a state dict that must match this architecture tensor for tensor, or say what differs."""
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
        if missing or extra or wrong:
            detail = (f"missing '{missing[0]}'" if missing else f"unexpected '{extra[0]}'" if extra else
                      f"'{wrong[0]}' has shape {tuple(state[wrong[0]].shape)}, expected "
                      f"{tuple(expected[wrong[0]].shape)}")
            raise ExportError(f"{source} is not in a layout tinyae knows ({detail}); it loads TAESD pairs and "
                              "AutoencoderTiny folders with one width per side and no skip convs.")
        self.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        return self

    def write_pretrained(self, folder: str | Path, dtype: torch.dtype | None = None,
                         fp16_variant: bool = False) -> None:
        """config.json + diffusion_pytorch_model.safetensors (+ the fp16 variant) into an existing folder."""
        folder = Path(folder)
        config = {"_class_name": "AutoencoderTiny", "_diffusers_version": diffusers.__version__,
                  **self.diffusers_config()}
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        save_file(cast_state(self.state_dict(), dtype), folder / WEIGHTS_NAME, metadata={"format": "pt"})
        if fp16_variant:
            save_file(cast_state(self.state_dict(), torch.float16), folder / FP16_WEIGHTS_NAME,
                      metadata={"format": "pt"})

    def save_pretrained(self, directory: str | Path, overwrite: bool = False, dtype: torch.dtype | None = None,
                        fp16_variant: bool = False) -> Path:
        """An AutoencoderTiny folder, written all or nothing; `from_pretrained` and diffusers both read it."""
        with atomic_folder(directory, overwrite) as tmp:
            self.write_pretrained(tmp, dtype, fp16_variant)
        return Path(directory)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "Student":
        """A float32 Student from an AutoencoderTiny folder or Hub repo (tinyae.load_student reads every layout)."""
        folder = Path(path)
        if not folder.exists() and looks_like_repo_id(str(path)):
            folder = fetch_snapshot(str(path), [CONFIG_NAME, "diffusion_pytorch_model*.safetensors"], "the student")
        if not (folder / CONFIG_NAME).is_file():
            raise ExportError(f"'{folder}' is not an AutoencoderTiny folder (no {CONFIG_NAME}); "
                              "tinyae.load_student reads TAESD pairs and training checkpoints too.")
        cfg = json.loads((folder / CONFIG_NAME).read_text())
        class_name = cfg.get("_class_name", "AutoencoderTiny")
        if class_name != "AutoencoderTiny":
            raise ExportError(f"'{folder}' holds a {class_name}, not an AutoencoderTiny: a full VAE is a teacher "
                              "(--teacher), not student weights.")
        if cfg.get("scaling_factor", 1.0) != 1.0 or cfg.get("shift_factor") not in (None, 0, 0.0):
            raise ExportError(f"'{folder}' has scaling_factor {cfg.get('scaling_factor')} / shift_factor "
                              f"{cfg.get('shift_factor')}; tinyae students work in diffusion-space latents "
                              "(1.0 / 0.0).")
        try:
            config = cls.config_from_diffusers(cfg)
        except ValueError as exc:
            raise ExportError(f"'{folder}': {exc}") from None
        weights = next((folder / name for name in WEIGHTS_NAMES if (folder / name).is_file()), None)
        if weights is None:
            raise ExportError(f"'{folder}' has a {CONFIG_NAME} but no {WEIGHTS_NAME}.")
        return cls(config).load_weights(read_weights(weights), f"'{weights}'")
