"""Model families: what a student is called and how it is plugged in where people use it.

A family fixes the file names ComfyUI and Forge look for (`<prefix>_encoder/_decoder`), the
student layout they build for that prefix, the published tiny decoder of the family, and what
the family's diffusers pipeline reads on `pipe.vae` besides `encode`/`decode`:

- "plain": `config.scaling_factor` (and shift), `config.block_out_channels` (StableDiffusion*,
  StableDiffusion3, Flux pipelines) or `config.encoder_block_out_channels` (SanaPipeline);
  AutoencoderTiny serves these where it can hold the layout;
- "patch-norm": also `vae.bn.running_mean/var` and `config.batch_norm_eps` (Flux2Pipeline,
  Flux2KleinPipeline denormalise with them before `vae.decode`); a student of the normalised
  space carries an identity batch norm, as TAEF2's author wraps it (madebyollin/taesd#35);
- "video": `vae.temperal_downsample`, `config.z_dim`, `config.latents_mean/std` and
  (B, C, frames, H, W) latents (QwenImagePipeline, WanPipeline); a student of the normalised
  space carries mean 0 / std 1 and folds frames into the batch.

The latent space each family's student reads is described in tinyae.models.latent_space.
"""

from __future__ import annotations

from dataclasses import dataclass

from tinyae.errors import ExportError

PIPELINE_VAES = ("plain", "patch-norm", "video")


@dataclass(frozen=True)
class Family:
    prefix: str | None  # TAESD file-name prefix (ComfyUI / Forge; taesana: taesd.py-style loaders); None: no pair
    latent_channels: int
    repo_id: str | None  # the published TAESD of this family in diffusers layout on the Hub, if there is one
    variant: str = "taesd"  # the layout published for this prefix, which its loaders build (tinyae.models.variants)
    pipeline_vae: str = "plain"  # what the family's pipeline reads on pipe.vae (see the module docstring)
    shipped: str | None = None  # the published pair that ships in weights/ (a prefix under it), if any
    name: str = ""  # how people call the models of the family
    taehv_model: str | None = None  # the TAEHV file clients preview the family with (video_student.VIDEO_MODELS)


FAMILIES: dict[str, Family] = {
    "sd": Family("taesd", 4, "madebyollin/taesd", name="Stable Diffusion 1.x / 2.x"),
    "sdxl": Family("taesdxl", 4, "madebyollin/taesdxl", name="SDXL"),
    "sd3": Family("taesd3", 16, "madebyollin/taesd3", name="SD3 / SD3.5"),
    "flux": Family("taef1", 16, "madebyollin/taef1", name="FLUX.1"),
    "flux2": Family("taef2", 32, None, "flux_2", "patch-norm", "taesd-upstream/taef2", name="FLUX.2"),
    "sana": Family("taesana", 32, None, "f32", name="Sana"),
    # ComfyUI previews Qwen-Image and Wan 2.1 with TAEW2.1 (madebyollin/taehv; comfy/latent_formats.py Wan21,
    # which supported_models.QwenImage uses), a video model of another architecture: no TAESD pair, but a video
    # student of the wan2.1 teacher exports as taew2_1 (tinyae.shipping.taehv).
    "qwen-image": Family(None, 16, None, "taesd", "video", name="Qwen-Image / Wan 2.1", taehv_model="taew2_1"),
}


def family_info(family: str) -> Family:
    if family not in FAMILIES:
        raise ExportError(f"Unknown family '{family}'; pass one of {', '.join(FAMILIES)}.")
    return FAMILIES[family]


def pipeline_vae(family: str | None) -> str:
    """What `pipe.vae` must offer in the family's pipelines ("plain" without a family)."""
    return family_info(family).pipeline_vae if family else "plain"
