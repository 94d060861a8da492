"""`TinyAutoencoder`: a diffusers model class for students that AutoencoderTiny cannot hold.

diffusers' AutoencoderTiny has one width per side and no stem or pool branch, so per-stage
widths (taesana's f32 layout, slim students) and FLUX.2's pool branch need a class of
their own. This one is a diffusers `ModelMixin` + `ConfigMixin`: `from_pretrained`,
`save_pretrained`, `encode(x).latents`, `decode(z).sample`, `scaling_factor` 1.0 and dtype
and device moves all behave as they do for AutoencoderTiny, so it works as `pipe.vae`
and in `tinyae.PreviewCallback`. Its layers are the Student's own (same state-dict keys).
`enable_tiling()` / `disable_tiling()` / `use_tiling` work as in diffusers' VAEs, with tinyae's
tiling (tinyae.models.tiling), which handles every latent channel count and downscale factor.
"""

from __future__ import annotations

from diffusers import AutoencoderTiny
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTinyOutput
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

from tinyae.models.student import Student, TinyDecoder, TinyEncoder
from tinyae.models.tiling import Tiling, TilingMixin
from tinyae.models.variants import StudentArch


class TinyAutoencoder(TilingMixin, ModelMixin, ConfigMixin):
    """A tiny autoencoder of any tinyae layout, usable wherever diffusers expects a VAE."""

    @register_to_config
    def __init__(self, latent_channels: int = 4, encoder_widths: tuple[int, ...] = (64, 64, 64, 64),
                 decoder_widths: tuple[int, ...] = (64, 64, 64, 64), encoder_blocks: tuple[int, ...] = (1, 3, 3, 3),
                 decoder_blocks: tuple[int, ...] = (3, 3, 3, 1), encoder_stem: tuple[int, ...] = (),
                 pool: bool = False, act_fn: str = "relu", upsample_fn: str = "nearest", scaling_factor: float = 1.0,
                 shift_factor: float = 0.0, force_upcast: bool = False):
        super().__init__()
        arch = StudentArch(latent_channels, encoder_widths, decoder_widths, encoder_blocks, decoder_blocks,
                           encoder_stem, pool, act_fn, upsample_fn)
        self.downscale = arch.downscale
        self.encoder = TinyEncoder(arch)
        self.decoder = TinyDecoder(arch)
        # What pipelines read to size latents: 2 ** (len(...) - 1) is the downscale factor.
        self.register_to_config(block_out_channels=tuple(decoder_widths),
                                encoder_block_out_channels=tuple(encoder_stem) + tuple(encoder_widths))

    def encode(self, x: Tensor, return_dict: bool = True) -> AutoencoderTinyOutput | tuple[Tensor]:
        latents = self.run_encoder(x)
        return AutoencoderTinyOutput(latents=latents) if return_dict else (latents,)

    def decode(self, z: Tensor, generator=None, return_dict: bool = True) -> DecoderOutput | tuple[Tensor]:
        sample = self.run_decoder(z)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(self, sample: Tensor, return_dict: bool = True) -> DecoderOutput | tuple[Tensor]:
        return self.decode(self.encode(sample).latents, return_dict=return_dict)


def diffusers_model(student: Student, tiling: Tiling | None = None) -> AutoencoderTiny | TinyAutoencoder:
    """A diffusers model holding a copy of the student's weights: AutoencoderTiny where it fits.

    With `tiling`, always a TinyAutoencoder with tiling enabled: AutoencoderTiny's own tiled
    encode writes 4 latent channels whatever the model has, so it cannot tile SD3/FLUX students.
    """
    if tiling is None and student.arch.autoencoder_tiny:
        model = AutoencoderTiny(**student.diffusers_config())
    else:
        model = TinyAutoencoder(**student.arch.to_dict())
    if tiling is not None:
        model.enable_tiling(tiling.tile, tiling.overlap)
    model.load_state_dict(student.state_dict(), strict=True)
    # nn.Module.to: diffusers' ModelMixin.to warns on every dtype cast, needed or not.
    return nn.Module.to(model, next(student.parameters()).dtype)
