"""Tiny decoders inside diffusers pipelines: as the pipeline's VAE, or as live previews.

A tiny decoder reads the latents the diffusion model sees (tinyae.models.latent_space), so
the latents a pipeline hands to `callback_on_step_end` (the noisy x_{t-1}) decode directly,
at a small fraction of the full VAE's cost. FLUX.1, FLUX.2 and Qwen-Image hand them over
packed into tokens of 2x2 latent patches, the same way in all three (`FluxPipeline._pack_latents`,
`Flux2Pipeline._patchify_latents` + `_pack_latents`, `QwenImagePipeline._pack_latents`), so they
are unpacked first; FLUX.2's tokens are batch-normalised, which is the space its student (and
TAEF2) reads, so nothing else is undone. Sana's latents are decoded as they are. The callback only
reads the latents: the pipeline's own tensors are never modified, and the generated image is the
same with or without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import AutoencoderTiny
from diffusers.callbacks import PipelineCallback
from PIL import Image
from torch import nn

from tinyae.data.images import to_pil
from tinyae.errors import ExportError
from tinyae.models.formats import FAMILIES, family_info, load_student
from tinyae.models.tiling import Tiling
from tinyae.models.tiny_autoencoder import TinyAutoencoder, diffusers_model
from tinyae.utils.dtypes import DTYPES
from tinyae.utils.resources import weights_dir


def published_decoder(family: str) -> str | Path:
    """Where the family's published tiny autoencoder is: shipped in weights/ (taef2) or on the Hub."""
    info = family_info(family)
    if info.shipped is not None:
        return weights_dir() / info.shipped
    if info.repo_id is None:
        raise ExportError(f"No published tiny decoder of family '{family}' is on the Hub in diffusers format; pass "
                          "your student's folder, or a TAESD pair of the family (such as madebyollin/taesd's files).")
    return info.repo_id


def load_preview_decoder(path_or_repo: str | Path | None = None, family: str | None = None,
                         dtype: torch.dtype | str = torch.float32,
                         device: str | torch.device | None = None,
                         tiling: bool | Tiling = False) -> AutoencoderTiny | TinyAutoencoder:
    """An AutoencoderTiny or TinyAutoencoder ready for `pipe.vae = ...` or for `PreviewCallback`.

    `path_or_repo` is a student (AutoencoderTiny/TinyAutoencoder folder, TAESD pair, checkpoint)
    or a Hub repo id; without it, `family` picks the published one (madebyollin/taesd, taesdxl,
    taesd3, taef1 on the Hub; the TAEF2 pair that ships with tinyae). With both, the latent
    channels are checked against the family, and the model offers what the family's pipelines
    read on `pipe.vae` (FLUX.2's `bn`, Qwen-Image's `latents_mean` ...). `tiling` (True for the
    default tiles, or a `Tiling`) returns a TinyAutoencoder that encodes and decodes large inputs
    tile by tile, for any latent channel count (tinyae.models.tiling).
    """
    tiles = Tiling() if tiling is True else tiling or None
    if path_or_repo is None:
        if family is None:
            raise ExportError(f"Pass a student folder, TAESD pair or Hub repo id, or a family "
                              f"({', '.join(FAMILIES)}) to use the published tiny decoder.")
        path_or_repo = published_decoder(family)
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    student = load_student(path_or_repo, family)
    # nn.Module.to: diffusers 0.42's ModelMixin.to warns on every dtype cast, needed or not.
    model = nn.Module.to(diffusers_model(student, family or student.family, tiles), dtype=dtype)
    if device is not None:
        model.to(device)
    return model.eval().requires_grad_(False)


def unpack_latents(latents: torch.Tensor, height: int | None = None, width: int | None = None,
                   vae_scale_factor: int = 8) -> torch.Tensor:
    """Packed (B, h/2 * w/2, C*4) tokens of FLUX.1, FLUX.2 or Qwen-Image -> (B, C, h, w) latents.

    `height`/`width` are the image size the pipeline was called with; without them the
    latent grid is taken to be square.
    """
    batch, tokens, packed_channels = latents.shape
    if height is None or width is None:
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(f"{tokens} latent tokens do not form a square grid; pass the image height and "
                             "width to PreviewCallback.")
        rows = cols = side
    else:
        rows, cols = int(height) // (vae_scale_factor * 2), int(width) // (vae_scale_factor * 2)
        if rows * cols != tokens:
            raise ValueError(f"A {height}x{width} image has {rows * cols} latent tokens, got {tokens}.")
    channels = packed_channels // 4
    patches = latents.reshape(batch, rows, cols, channels, 2, 2)
    return patches.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, rows * 2, cols * 2)


class PreviewCallback(PipelineCallback):
    """`callback_on_step_end` that decodes the current latents every `every` steps.

    The PIL images go to `on_preview(step, images)` and/or into `save_dir` as
    `step-0004-0.png` (step index, image index). Pass it as
    `pipe(..., callback_on_step_end=PreviewCallback(decoder, every=5, save_dir="previews"))`.
    """

    tensor_inputs = ["latents"]

    def __init__(self, decoder: AutoencoderTiny | TinyAutoencoder, every: int = 1,
                 on_preview: Callable[[int, list[Image.Image]], None] | None = None,
                 save_dir: str | Path | None = None, height: int | None = None, width: int | None = None):
        super().__init__()
        if every < 1:
            raise ValueError(f"every must be a positive number of steps, got {every}.")
        if on_preview is None and save_dir is None:
            raise ValueError("Pass on_preview (a function of step and images) or save_dir, or both.")
        self.decoder, self.every, self.on_preview = decoder, every, on_preview
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.height, self.width = height, width

    def callback_fn(self, pipeline, step_index: int, timestep, callback_kwargs: dict) -> dict:
        if (step_index + 1) % self.every == 0:
            images = self.decode(callback_kwargs["latents"], pipeline)
            if self.save_dir is not None:
                self.save_dir.mkdir(parents=True, exist_ok=True)
                for i, image in enumerate(images):
                    image.save(self.save_dir / f"step-{step_index:04d}-{i}.png")
            if self.on_preview is not None:
                self.on_preview(step_index, images)
        return callback_kwargs

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, pipeline=None) -> list[Image.Image]:
        """The diffusion model's latents (packed tokens, one-frame videos too) -> PIL images; only read."""
        z = latents.detach()
        if z.ndim == 3:
            z = unpack_latents(z, self.height, self.width, getattr(pipeline, "vae_scale_factor", 8))
        if z.ndim == 5 and z.shape[2] == 1:  # (B, C, 1, h, w): one frame of a video VAE's latents
            z = z[:, :, 0]
        if z.ndim != 4:
            raise ValueError(f"Expected image latents (B, C, H, W), got shape {tuple(z.shape)}: video latents are "
                             "not supported.")
        config = self.decoder.config
        z = z / config.scaling_factor + (config.shift_factor or 0.0)
        param = next(self.decoder.parameters())
        images = self.decoder.decode(z.to(param.device, param.dtype)).sample.float()
        processor = getattr(pipeline, "image_processor", None)
        if processor is not None:
            return processor.postprocess(images, output_type="pil")
        return [to_pil(image) for image in images]
