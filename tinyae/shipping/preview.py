"""Tiny decoders inside diffusers pipelines: as the pipeline's VAE, or as live previews.

A tiny decoder reads the latents the diffusion model sees, so the latents a pipeline
hands to `callback_on_step_end` (the noisy x_{t-1}) decode directly, at a small
fraction of the full VAE's cost. FLUX hands them over packed into 2x2 patches, so
they are unpacked first. The callback only reads the latents: the pipeline's own
tensors are never modified, and the generated image is the same with or without it.
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
from tinyae.models.formats import family_info, load_student
from tinyae.models.student import Student
from tinyae.models.tiling import Tiling
from tinyae.models.tiny_autoencoder import TinyAutoencoder, diffusers_model
from tinyae.utils.dtypes import DTYPES
from tinyae.utils.hub_access import hub_unreachable, not_on_hub_message, quiet_hub


def load_preview_decoder(path_or_repo: str | Path | None = None, family: str | None = None,
                         dtype: torch.dtype | str = torch.float32,
                         device: str | torch.device | None = None,
                         tiling: bool | Tiling = False) -> AutoencoderTiny | TinyAutoencoder:
    """An AutoencoderTiny (or TinyAutoencoder) ready for `pipe.vae = ...` or for `PreviewCallback`.

    `path_or_repo` is a local student (AutoencoderTiny folder, TAESD pair, checkpoint) or a
    Hub repo id; without it, `family` picks the published TAESD (madebyollin/taesd, taesdxl,
    taesd3, taef1). With both, the latent channels are checked against the family.
    `tiling` (True for the default tiles, or a `Tiling`) returns a TinyAutoencoder that encodes
    and decodes large inputs tile by tile, for any latent channel count (tinyae.models.tiling).
    """
    tiles = Tiling() if tiling is True else tiling or None
    if path_or_repo is None:
        if family is None:
            raise ExportError("Pass a student folder, TAESD pair or Hub repo id, or a family "
                              "(sd, sdxl, sd3, flux) to use the published TAESD.")
        path_or_repo = family_info(family).repo_id
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    if Path(path_or_repo).exists():
        model = diffusers_model(load_student(path_or_repo, family), tiles)
        # nn.Module.to: diffusers 0.42's ModelMixin.to warns on every dtype cast, needed or not.
        nn.Module.to(model, dtype=dtype)
    else:
        try:
            with quiet_hub():
                model = AutoencoderTiny.from_pretrained(str(path_or_repo), torch_dtype=dtype,
                                                        local_files_only=hub_unreachable())
        except Exception:  # diffusers/huggingface_hub raise many types for offline / unreachable / unknown
            raise ExportError(not_on_hub_message(str(path_or_repo), "the decoder")) from None
        if family is not None and model.config.latent_channels != family_info(family).latent_channels:
            raise ExportError(f"'{path_or_repo}' decodes {model.config.latent_channels}-channel latents but family "
                              f"'{family}' uses {family_info(family).latent_channels}.")
        if tiles is not None:
            student = Student(Student.arch_from_diffusers(dict(model.config)))
            model = diffusers_model(student.load_weights(model.state_dict(), f"'{path_or_repo}'"), tiles)
            nn.Module.to(model, dtype=dtype)
    if device is not None:
        model.to(device)
    return model.eval().requires_grad_(False)


def unpack_flux_latents(latents: torch.Tensor, height: int | None = None, width: int | None = None,
                        vae_scale_factor: int = 8) -> torch.Tensor:
    """FLUX's packed (B, h/2 * w/2, C*4) tokens -> (B, C, h, w) latents.

    `height`/`width` are the image size the pipeline was called with; without them the
    latent grid is taken to be square.
    """
    batch, tokens, packed_channels = latents.shape
    if height is None or width is None:
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(f"{tokens} FLUX latent tokens do not form a square grid; pass the image height and "
                             "width to PreviewCallback.")
        rows = cols = side
    else:
        rows, cols = int(height) // (vae_scale_factor * 2), int(width) // (vae_scale_factor * 2)
        if rows * cols != tokens:
            raise ValueError(f"A {height}x{width} image has {rows * cols} FLUX latent tokens, got {tokens}.")
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

    def __init__(self, decoder: AutoencoderTiny, every: int = 1,
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
        """Diffusion-space latents (packed FLUX ones too) -> PIL images; `latents` is only read."""
        z = latents.detach()
        if z.ndim == 3:
            z = unpack_flux_latents(z, self.height, self.width, getattr(pipeline, "vae_scale_factor", 8))
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
