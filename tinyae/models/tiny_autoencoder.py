"""`TinyAutoencoder`: a diffusers model class for students that AutoencoderTiny cannot hold.

diffusers' AutoencoderTiny has one width per side and no stem or pool branch, so per-stage
widths (taesana's f32 layout, slim students) and FLUX.2's pool branch need a class of
their own. This one is a diffusers `ModelMixin` + `ConfigMixin`: `from_pretrained`,
`save_pretrained`, `encode(x).latents`, `decode(z).sample`, `scaling_factor` 1.0 and dtype
and device moves all behave as they do for AutoencoderTiny, so it works as `pipe.vae`
and in `tinyae.PreviewCallback`. Its layers are the Student's own (same state-dict keys).

Saved with a `family`, it also offers what that family's pipelines read on `pipe.vae`
(tinyae.models.families): FLUX.2's `bn` statistics and `batch_norm_eps`, Qwen-Image's
`temperal_downsample`, `z_dim` and `latents_mean/std`, all set to the identity, because the
student already reads and writes the normalised space the transformer sees. Video-shaped
(B, C, frames, H, W) inputs are encoded and decoded frame by frame. `enable_tiling()` /
`disable_tiling()` / `use_tiling` work as in diffusers' VAEs, with tinyae's tiling
(tinyae.models.tiling), which handles every latent channel count and downscale factor.
"""

from __future__ import annotations

import math

import torch
from diffusers import AutoencoderTiny
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTinyOutput
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

from tinyae.models.families import pipeline_vae
from tinyae.models.student import Student, TinyDecoder, TinyEncoder, tiny_autoencoder_config
from tinyae.models.tiling import Tiling, TilingMixin
from tinyae.models.variants import StudentArch

# Config entries derived from the layout and the family at construction, for the pipelines that read
# them; they are written to config.json for those readers and dropped again on loading.
DERIVED_CONFIG = ("block_out_channels", "encoder_block_out_channels", "batch_norm_eps", "patch_size", "z_dim",
                  "latents_mean", "latents_std")


class IdentityBatchNorm(nn.Module):
    """The running statistics Flux2Pipeline reads off `vae.bn`, fixed at mean 0 and variance 1 (not saved)."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(channels), persistent=False)
        self.register_buffer("running_var", torch.ones(channels), persistent=False)
        self.eps = 0.0


def _frames_to_batch(x: Tensor) -> tuple[Tensor, int | None]:
    if x.ndim != 5:
        return x, None
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w), t


def _batch_to_frames(x: Tensor, frames: int | None) -> Tensor:
    if frames is None:
        return x
    bt, c, h, w = x.shape
    return x.reshape(bt // frames, frames, c, h, w).permute(0, 2, 1, 3, 4)


class TinyAutoencoder(TilingMixin, ModelMixin, ConfigMixin):
    """A tiny autoencoder of any tinyae layout, usable wherever diffusers expects a VAE."""

    @register_to_config
    def __init__(self, latent_channels: int = 4, encoder_widths: tuple[int, ...] = (64, 64, 64, 64),
                 decoder_widths: tuple[int, ...] = (64, 64, 64, 64), encoder_blocks: tuple[int, ...] = (1, 3, 3, 3),
                 decoder_blocks: tuple[int, ...] = (3, 3, 3, 1), encoder_stem: tuple[int, ...] = (),
                 pool: bool = False, act_fn: str = "relu", upsample_fn: str = "nearest", scaling_factor: float = 1.0,
                 shift_factor: float = 0.0, force_upcast: bool = False, family: str | None = None):
        super().__init__()
        arch = StudentArch(latent_channels, encoder_widths, decoder_widths, encoder_blocks, decoder_blocks,
                           encoder_stem, pool, act_fn, upsample_fn)
        self.downscale = arch.downscale
        self.encoder = TinyEncoder(arch)
        self.decoder = TinyDecoder(arch)
        # What pipelines read to size latents: 2 ** (len(...) - 1) is the downscale factor.
        self.register_to_config(block_out_channels=tuple(decoder_widths),
                                encoder_block_out_channels=tuple(encoder_stem) + tuple(encoder_widths))
        interface = pipeline_vae(family)
        if interface == "patch-norm":  # Flux2Pipeline: latents * sqrt(bn.running_var + eps) + bn.running_mean
            self.bn = IdentityBatchNorm(4 * latent_channels)
            self.register_to_config(batch_norm_eps=0.0, patch_size=(2, 2))
        elif interface == "video":  # QwenImagePipeline: latents * latents_std + latents_mean, 5D
            self.temperal_downsample = [False] * int(math.log2(arch.downscale))  # its length gives the downscale
            self.spatial_compression_ratio = arch.downscale
            self.register_to_config(z_dim=latent_channels, latents_mean=[0.0] * latent_channels,
                                    latents_std=[1.0] * latent_channels)

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        # The derived entries are not constructor arguments: without this, diffusers warns on every load.
        config_dict = tiny_autoencoder_config(config_dict)
        return super().extract_init_dict({k: v for k, v in config_dict.items() if k not in DERIVED_CONFIG}, **kwargs)

    def encode(self, x: Tensor, return_dict: bool = True) -> AutoencoderTinyOutput | tuple[Tensor]:
        images, frames = _frames_to_batch(x)
        latents = _batch_to_frames(self.run_encoder(images), frames)
        return AutoencoderTinyOutput(latents=latents) if return_dict else (latents,)

    def decode(self, z: Tensor, generator=None, return_dict: bool = True) -> DecoderOutput | tuple[Tensor]:
        latents, frames = _frames_to_batch(z)
        sample = _batch_to_frames(self.run_decoder(latents), frames)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(self, sample: Tensor, return_dict: bool = True) -> DecoderOutput | tuple[Tensor]:
        return self.decode(self.encode(sample).latents, return_dict=return_dict)


def diffusers_model(student: Student, family: str | None = None,
                    tiling: Tiling | None = None) -> AutoencoderTiny | TinyAutoencoder:
    """A diffusers model holding a copy of the student's weights: AutoencoderTiny where it fits the family.

    With `tiling`, always a TinyAutoencoder with tiling enabled: AutoencoderTiny's own tiled
    encode writes 4 latent channels whatever the model has, so it cannot tile SD3/FLUX students.
    """
    if tiling is None and student.diffusers_class_name(family) == "AutoencoderTiny":
        model = AutoencoderTiny(**student.diffusers_config(family))
    else:
        model = TinyAutoencoder(**student.arch.to_dict(), family=family)
    if tiling is not None:
        model.enable_tiling(tiling.tile, tiling.overlap)
    model.load_state_dict(student.state_dict(), strict=True)
    # nn.Module.to: diffusers' ModelMixin.to warns on every dtype cast, needed or not.
    return nn.Module.to(model, next(student.parameters()).dtype)
