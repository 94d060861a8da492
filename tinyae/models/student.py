"""The student: a TAESD-style deterministic encoder/decoder in diffusion-space latents.

Stages of residual conv blocks, halving (encoder) or doubling (decoder) the resolution
between stages; the layout comes from a `StudentArch` (tinyae.models.variants). Images
are in [-1, 1] (diffusers' convention); latents are what the diffusion model sees (already
scaled). State-dict keys follow diffusers' AutoencoderTiny (`encoder.layers.N.*`,
`decoder.layers.N.*`), so a student of TAESD's shape saves as a plain AutoencoderTiny and
any other as a `TinyAutoencoder` (tinyae.models.tiny_autoencoder), and every student maps
to the TAESD pair format of ComfyUI and Forge (tinyae.models.formats).
"""

from __future__ import annotations

import dataclasses
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
from tinyae.models.families import pipeline_vae
from tinyae.models.tiling import TilingMixin
from tinyae.models.variants import StudentArch, resolve_arch
from tinyae.utils.atomic import atomic_files, atomic_folder
from tinyae.utils.hub_access import fetch_snapshot, looks_like_repo_id
from tinyae.utils.weights import cast_state, read_weights

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
FP16_WEIGHTS_NAME = "diffusion_pytorch_model.fp16.safetensors"
WEIGHTS_NAMES = (WEIGHTS_NAME, FP16_WEIGHTS_NAME, "diffusion_pytorch_model.bin")  # the order they are read in


def conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Block(nn.Module):
    """Three 3x3 convs with a residual (`conv.0/2/4`, as diffusers' AutoencoderTinyBlock).

    With `pool`, a 1x1 -> GroupNorm(4) -> ReLU -> 1x1 branch is first added to the input
    (`pool.0/1/3`): the normalisation mixes the whole map, which FLUX.2's latents need.
    """

    def __init__(self, width: int, act_fn: str = "relu", pool: bool = False):
        super().__init__()
        act = get_activation(act_fn)
        self.conv = nn.Sequential(conv(width, width), act, conv(width, width), act, conv(width, width))
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()
        self.pool = None
        if pool:
            hidden = 4 * width
            self.pool = nn.Sequential(nn.Conv2d(width, hidden, 1, bias=False), nn.GroupNorm(4, hidden), nn.ReLU(),
                                      nn.Conv2d(hidden, width, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


class _Checkpointable(nn.Module):
    gradient_checkpointing = False

    def run_layers(self, x: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint_sequential(self.layers, 4, x, use_reentrant=False)
        return self.layers(x)


class TinyEncoder(_Checkpointable):
    """Image in [-1, 1] -> latents: [stem], then stages, each after the first opened by a stride-2 conv.

    `local_stages` then `global_stages` is `forward` split where the pool branch starts: it normalises
    over the whole map, so tiling (tinyae.models.tiling) tiles only the local stages.
    """

    def __init__(self, arch: StudentArch):
        super().__init__()
        act, widths = arch.act_fn, arch.encoder_widths
        layers: list[nn.Module] = []
        n_in = 3
        for width in arch.encoder_stem:  # stride-2 convs with an activation, before the first stage
            layers += [conv(n_in, width, stride=2), get_activation(act)]
            n_in = width
        if not arch.encoder_stem:
            layers.append(conv(3, widths[0]))
        for stage, (width, n_blocks) in enumerate(zip(widths, arch.encoder_blocks)):
            if stage:
                layers.append(conv(widths[stage - 1], width, stride=2, bias=False))
            deepest = stage == len(widths) - 1
            layers += [Block(width, act, pool=arch.pool and deepest) for _ in range(n_blocks)]
        layers.append(conv(widths[-1], arch.latent_channels))
        self.layers = nn.Sequential(*layers)
        pools = [i for i, m in enumerate(layers) if isinstance(m, Block) and m.pool is not None]
        self.split = pools[0] if pools else len(layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # The rescale sits outside the checkpointed layers on purpose: diffusers skips it there.
        return self.run_layers(images.add(1).div(2))

    def local_stages(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers[:self.split](images.add(1).div(2))

    def global_stages(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers[self.split:](features)


class TinyDecoder(_Checkpointable):
    """Latents -> image in [-1, 1]; a soft clamp (tanh) keeps wild latents from exploding.

    `global_stages` then `local_stages` is `forward` split after the last pool branch (see TinyEncoder).
    """

    def __init__(self, arch: StudentArch):
        super().__init__()
        act, widths = arch.act_fn, arch.decoder_widths
        layers: list[nn.Module] = [conv(arch.latent_channels, widths[0]), get_activation(act)]
        for stage, (width, n_blocks) in enumerate(zip(widths, arch.decoder_blocks)):
            layers += [Block(width, act, pool=arch.pool and stage == 0) for _ in range(n_blocks)]
            if stage < len(widths) - 1:
                layers += [nn.Upsample(scale_factor=2, mode=arch.upsample_fn), conv(width, widths[stage + 1], bias=False)]
            else:
                layers.append(conv(width, 3))
        self.layers = nn.Sequential(*layers)
        pools = [i for i, m in enumerate(layers) if isinstance(m, Block) and m.pool is not None]
        self.split = pools[-1] + 1 if pools else 0

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.run_layers(torch.tanh(latents / 3) * 3).mul(2).sub(1)

    def global_stages(self, latents: torch.Tensor) -> torch.Tensor:
        return self.layers[:self.split](torch.tanh(latents / 3) * 3)

    def local_stages(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers[self.split:](features).mul(2).sub(1)


# A TinyAutoencoder folder's config.json stores its activation as `activation` and gives `act_fn`, which diffusers'
# AutoencoderTiny reads, a value that makes `AutoencoderTiny.from_pretrained` fail at once with this sentence in its
# error: AutoencoderTiny would otherwise load such a folder (FLUX.2's pool branch, Sana's stem) with a warning and
# decode it wrongly.
NOT_AUTOENCODER_TINY = "TinyAutoencoder: load this folder with tinyae.TinyAutoencoder.from_pretrained, not AutoencoderTiny"


def tiny_autoencoder_config(cfg: dict) -> dict:
    """A TinyAutoencoder config.json with its real activation under `act_fn` (folders of every tinyae version)."""
    if "activation" not in cfg:
        return cfg
    return {**{k: v for k, v in cfg.items() if k != "activation"}, "act_fn": cfg["activation"]}


class Student(TilingMixin, nn.Module):
    """Encoder + decoder with diffusers' AutoencoderTiny key layout; `encode`/`decode` work on tensors.

    `enable_tiling()` makes both run tile by tile on inputs larger than a tile (tinyae.models.tiling).
    """

    def __init__(self, arch: StudentArch | StudentConfig):
        super().__init__()
        if isinstance(arch, StudentConfig):
            arch = resolve_arch(arch)
        self.arch = arch
        self.family: str | None = None  # the family its files were saved for, when they say (TinyAutoencoder, pair)
        self.untrained: tuple[str, ...] = ()  # halves that did not come from its files (an encoder published alone)
        self.encoder = TinyEncoder(arch)
        self.decoder = TinyDecoder(arch)

    @property
    def latent_channels(self) -> int:
        return self.arch.latent_channels

    @property
    def downscale(self) -> int:
        return self.arch.downscale

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.encoder.gradient_checkpointing = enabled
        self.decoder.gradient_checkpointing = enabled

    def init_output_bias(self, value: float = 0.0) -> "Student":
        """Start the decoder's last bias at `value` in [-1, 1] image units (0: mid-grey, as TAESD's 0.5 in [0, 1])."""
        with torch.no_grad():
            self.decoder.layers[-1].bias.fill_((value + 1) / 2)
        return self

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.run_encoder(images)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.run_decoder(latents)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))

    # ------------------------------------------------------------ diffusers

    def diffusers_class_name(self, family: str | None = None) -> str:
        """AutoencoderTiny where it holds the layout and works as the family's `pipe.vae`, else TinyAutoencoder."""
        return "AutoencoderTiny" if self.arch.autoencoder_tiny and pipeline_vae(family) == "plain" else "TinyAutoencoder"

    def diffusers_config(self, family: str | None = None) -> dict:
        """Constructor arguments of the diffusers class that holds these tensors (factors 1/0: latents are scaled)."""
        a = self.arch
        if self.diffusers_class_name(family) == "TinyAutoencoder":
            return {"latent_channels": a.latent_channels, "encoder_widths": list(a.encoder_widths),
                    "decoder_widths": list(a.decoder_widths), "encoder_blocks": list(a.encoder_blocks),
                    "decoder_blocks": list(a.decoder_blocks), "encoder_stem": list(a.encoder_stem), "pool": a.pool,
                    "act_fn": NOT_AUTOENCODER_TINY, "activation": a.act_fn, "upsample_fn": a.upsample_fn,
                    "scaling_factor": 1.0, "shift_factor": 0.0,
                    "family": family}
        return {
            "in_channels": 3,
            "out_channels": 3,
            "encoder_block_out_channels": list(a.encoder_widths),
            "decoder_block_out_channels": list(a.decoder_widths),
            "act_fn": a.act_fn,
            "upsample_fn": a.upsample_fn,
            "latent_channels": a.latent_channels,
            "upsampling_scaling_factor": 2,
            "num_encoder_blocks": list(a.encoder_blocks),
            "num_decoder_blocks": list(a.decoder_blocks),
            "latent_magnitude": 3,
            "latent_shift": 0.5,
            "force_upcast": False,
            "scaling_factor": 1.0,
            "shift_factor": 0.0,
        }

    @staticmethod
    def arch_from_diffusers(cfg: dict) -> StudentArch:
        """Inverse of `diffusers_config` for either class; refuses configs tinyae cannot represent."""
        if cfg.get("_class_name") == "TinyAutoencoder":
            names = {f.name for f in dataclasses.fields(StudentArch)}
            return StudentArch(**{k: v for k, v in tiny_autoencoder_config(cfg).items() if k in names})
        if cfg.get("upsampling_scaling_factor", 2) != 2 or cfg.get("in_channels", 3) != 3:
            raise ValueError("Only 3-channel images and 2x upsampling are supported.")
        enc, dec = cfg.get("encoder_block_out_channels", [64] * 4), cfg.get("decoder_block_out_channels", [64] * 4)
        if len(set(enc)) != 1 or len(set(dec)) != 1:
            raise ValueError(f"Per-stage widths {enc}/{dec} in an AutoencoderTiny config do not run in diffusers "
                             "(it builds no transition convs); such a student is saved as a TinyAutoencoder.")
        return StudentArch(latent_channels=cfg.get("latent_channels", 4), encoder_widths=enc, decoder_widths=dec,
                           encoder_blocks=cfg.get("num_encoder_blocks", [1, 3, 3, 3]),
                           decoder_blocks=cfg.get("num_decoder_blocks", [3, 3, 3, 1]),
                           act_fn=cfg.get("act_fn", "relu"), upsample_fn=cfg.get("upsample_fn", "nearest"))

    def load_weights(self, state: dict[str, torch.Tensor], source: str, part: str | None = None) -> "Student":
        """Load a state dict that must match this architecture tensor for tensor, or say what differs.

        `part` ("encoder" or "decoder") loads that side only and leaves the other as it is.
        """
        expected = {k: v for k, v in self.state_dict().items() if part is None or k.startswith(f"{part}.")}
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
        if missing or extra or wrong:
            detail = (f"missing '{missing[0]}'" if missing else f"unexpected '{extra[0]}'" if extra else
                      f"'{wrong[0]}' has shape {tuple(state[wrong[0]].shape)}, expected "
                      f"{tuple(expected[wrong[0]].shape)}")
            raise ExportError(f"{source} does not match the student architecture it describes ({detail}).")
        self.load_state_dict({k: v.float() for k, v in state.items()}, strict=part is None)
        return self

    def write_pretrained(self, folder: str | Path, dtype: torch.dtype | None = None,
                         fp16_variant: bool = False, family: str | None = None) -> None:
        """config.json + diffusion_pytorch_model.safetensors (+ the fp16 variant) into an existing folder.

        `family` makes the folder work as `pipe.vae` in that family's pipelines (tinyae.models.families).
        The files take their names together once all are written (tinyae.utils.atomic.atomic_files).
        """
        config = {"_class_name": self.diffusers_class_name(family), "_diffusers_version": diffusers.__version__,
                  **self.diffusers_config(family)}
        with atomic_files(folder) as stage:
            stage(CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
            save_file(cast_state(self.state_dict(), dtype), stage(WEIGHTS_NAME), metadata={"format": "pt"})
            if fp16_variant:
                save_file(cast_state(self.state_dict(), torch.float16), stage(FP16_WEIGHTS_NAME),
                          metadata={"format": "pt"})

    def save_pretrained(self, directory: str | Path, overwrite: bool = False, dtype: torch.dtype | None = None,
                        fp16_variant: bool = False, family: str | None = None) -> Path:
        """A diffusers folder (AutoencoderTiny or TinyAutoencoder), written all or nothing."""
        with atomic_folder(directory, overwrite) as tmp:
            self.write_pretrained(tmp, dtype, fp16_variant, family)
        return Path(directory)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "Student":
        """A float32 Student from an AutoencoderTiny or TinyAutoencoder folder or Hub repo.

        tinyae.load_student reads every other layout too (TAESD pairs, training checkpoints).
        """
        folder = Path(path)
        if not folder.exists() and looks_like_repo_id(str(path)):
            folder = fetch_snapshot(str(path), [CONFIG_NAME, "diffusion_pytorch_model*.safetensors"], "the student")
        if not (folder / CONFIG_NAME).is_file():
            raise ExportError(f"'{folder}' is not an AutoencoderTiny folder (no {CONFIG_NAME}); "
                              "tinyae.load_student reads TAESD pairs and training checkpoints too.")
        cfg = json.loads((folder / CONFIG_NAME).read_text())
        class_name = cfg.get("_class_name", "AutoencoderTiny")
        if class_name == "VideoStudent":
            raise ExportError(f"'{folder}' holds a video student (VideoStudent, TAEHV layout), not an image student: "
                              "export it with --to taehv; image exports, image warm starts and derive-teacher's "
                              "--donor take an image student.")
        if class_name not in ("AutoencoderTiny", "TinyAutoencoder"):
            raise ExportError(f"'{folder}' holds a {class_name}, not an AutoencoderTiny: a full VAE is a teacher "
                              "(--teacher), not student weights.")
        if cfg.get("scaling_factor", 1.0) != 1.0 or cfg.get("shift_factor") not in (None, 0, 0.0):
            raise ExportError(f"'{folder}' has scaling_factor {cfg.get('scaling_factor')} / shift_factor "
                              f"{cfg.get('shift_factor')}; tinyae students work in diffusion-space latents "
                              "(1.0 / 0.0).")
        try:
            arch = cls.arch_from_diffusers(cfg)
        except (ValueError, TypeError) as exc:
            raise ExportError(f"'{folder}': {exc}") from None
        weights = next((folder / name for name in WEIGHTS_NAMES if (folder / name).is_file()), None)
        if weights is None:
            raise ExportError(f"'{folder}' has a {CONFIG_NAME} but no {WEIGHTS_NAME}.")
        student = cls(arch).load_weights(read_weights(weights), f"'{weights}'")
        student.family = cfg.get("family")
        return student
