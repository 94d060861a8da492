"""Small real VAEs and pipelines of the FLUX.2, Sana and Qwen-Image families, built offline from configs.

Each family's pipeline gets a transformer of a few thousand parameters and prompt embeddings
instead of a text encoder, so a generation of 2 steps at 64 px takes well under a second.
"""

import torch
from diffusers import (
    AutoencoderDC,
    AutoencoderKLFlux2,
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
    SanaPipeline,
    SanaTransformer2DModel,
)

from tinyae.config import StudentConfig
from tinyae.models.student import Student
from tinyae.models.variants import resolve_arch

SIZE = 64  # px of every test generation
STEPS = 2


def flux2_vae(seed: int = 0) -> AutoencoderKLFlux2:
    """An f8, 32-channel AutoencoderKLFlux2 whose batch norm has non-trivial running statistics."""
    torch.manual_seed(seed)
    vae = AutoencoderKLFlux2(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                             up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=4,
                             latent_channels=32, mid_block_add_attention=False, use_quant_conv=False,
                             use_post_quant_conv=False)
    vae.bn.running_mean.copy_(torch.randn(128) * 0.3)
    vae.bn.running_var.copy_(torch.rand(128) * 2 + 0.2)
    return vae.eval()


def qwen_image_vae(seed: int = 0) -> AutoencoderKLQwenImage:
    """An f8, 16-channel AutoencoderKLQwenImage (the Wan 2.1 VAE class) with non-trivial latents_mean/std."""
    gen = torch.Generator().manual_seed(seed + 1)
    torch.manual_seed(seed)
    return AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                  temperal_downsample=[False, True, True],
                                  latents_mean=torch.randn(16, generator=gen).tolist(),
                                  latents_std=(torch.rand(16, generator=gen) + 0.5).tolist()).eval()


def dc_ae(seed: int = 0) -> AutoencoderDC:
    """An f32, 32-channel AutoencoderDC with Sana's scaling factor."""
    torch.manual_seed(seed)
    return AutoencoderDC(latent_channels=32, encoder_block_types="ResBlock", decoder_block_types="ResBlock",
                         encoder_block_out_channels=(8, 8, 16, 16, 32, 32),
                         decoder_block_out_channels=(8, 8, 16, 16, 32, 32), encoder_layers_per_block=(1,) * 6,
                         decoder_layers_per_block=(1,) * 6, encoder_qkv_multiscales=((),) * 6,
                         decoder_qkv_multiscales=((),) * 6, downsample_block_type="conv",
                         upsample_block_type="interpolate", scaling_factor=0.41407).eval()


VAES = {"flux2": flux2_vae, "sana": dc_ae, "qwen-image": qwen_image_vae}


def tiny_student(family: str, seed: int = 0) -> Student:
    """The family's default layout (flux_2, f32, taesd) at width 8 and one block per stage."""
    variant = {"flux2": "flux_2", "sana": "f32", "qwen-image": "taesd"}[family]
    channels = {"flux2": 32, "sana": 32, "qwen-image": 16}[family]
    stages = 6 if family == "sana" else 4
    torch.manual_seed(seed)
    return Student(resolve_arch(StudentConfig(
        variant=variant, latent_channels=channels, encoder_widths=[8], decoder_widths=[8],
        encoder_blocks=[1, 1, 1, 1], decoder_blocks=[1] * stages, encoder_stem=[8, 8] if family == "sana" else None)))


def pipeline(family: str, vae):
    """The family's diffusers pipeline around `vae`, with a tiny transformer and no text encoder.

    "flux2" is FLUX.2 [klein]'s Flux2KleinPipeline, "flux2-dev" FLUX.2 [dev]'s Flux2Pipeline (guidance-distilled).
    """
    torch.manual_seed(0)
    scheduler = FlowMatchEulerDiscreteScheduler()
    if family in ("flux2", "flux2-dev"):
        transformer = Flux2Transformer2DModel(patch_size=1, in_channels=128, num_layers=1, num_single_layers=1,
                                              attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                              timestep_guidance_channels=256, axes_dims_rope=[4, 4, 4, 4],
                                              guidance_embeds=family == "flux2-dev")
        pipeline_class = Flux2Pipeline if family == "flux2-dev" else Flux2KleinPipeline
        pipe = pipeline_class(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, transformer=transformer)
    elif family == "sana":
        transformer = SanaTransformer2DModel(patch_size=1, in_channels=32, out_channels=32, num_layers=1,
                                             num_attention_heads=2, attention_head_dim=4, num_cross_attention_heads=2,
                                             cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=8,
                                             sample_size=32)
        pipe = SanaPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                            scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0))
    else:
        transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=1,
                                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                                  guidance_embeds=False, axes_dims_rope=(8, 4, 4))
        pipe = QwenImagePipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None,
                                 transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(family: str, pipe, callback=None, output_type: str = "np"):
    """A seeded 2-step generation at 64 px from random prompt embeddings."""
    gen = torch.Generator().manual_seed(1)
    common = dict(height=SIZE, width=SIZE, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                  output_type=output_type, callback_on_step_end=callback)
    if family in ("flux2", "flux2-dev"):
        guidance = 4.0 if family == "flux2-dev" else 1.0
        return pipe(prompt_embeds=torch.randn(1, 8, 16, generator=gen), guidance_scale=guidance, **common).images
    if family == "sana":
        embeds, mask = torch.randn(1, 8, 8, generator=gen), torch.ones(1, 8)
        return pipe(prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt=None,
                    negative_prompt_embeds=torch.zeros_like(embeds), negative_prompt_attention_mask=mask,
                    guidance_scale=4.5, use_resolution_binning=False, **common).images
    return pipe(prompt_embeds=torch.randn(1, 8, 16, generator=gen), prompt_embeds_mask=torch.ones(1, 8, dtype=torch.long),
                true_cfg_scale=1.0, **common).images
