"""Teacher presets: a registry of named VAEs (timm-style), each with its latent convention.

A preset names where the VAE lives (a Hub repo, or weights that ship with tinyae), its
diffusers class, the factors of its latent space when they are not the VAE config's own,
the family its exports are named for, and its architecture for weights-free builds
(benchmarks and tests). The convention of each space, and the pipeline code it was read
from, is in tinyae.models.latent_space. Register your own with `register_teacher`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tinyae.utils.resources import weights_dir

# Architectures of the families, for weights-free builds (benchmarks, tests).
_SD_ARCH = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
)
_SD3_ARCH = dict(_SD_ARCH, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)
# AutoencoderKLFlux2's defaults are FLUX.2's VAE (f8, 32 channels, 2x2 patch batch norm).
_FLUX2_ARCH = dict(_SD_ARCH, latent_channels=32, patch_size=(2, 2), batch_norm_eps=1e-4)
# dc-ae-f32c32-sana-1.0, as diffusers' scripts/convert_dcae_to_diffusers.py configures it.
_DCAE_SANA_ARCH = dict(
    latent_channels=32,
    encoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
    decoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
    encoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
    decoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
    encoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
    decoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
    encoder_layers_per_block=(2, 2, 2, 3, 3, 3),
    decoder_layers_per_block=(3, 3, 3, 3, 3, 3),
    downsample_block_type="conv",
    upsample_block_type="interpolate",
    scaling_factor=0.41407,
)
# AutoencoderKLQwenImage's defaults are Qwen-Image's VAE (the Wan 2.1 VAE: f8, 16 channels, per-channel stats).
_QWEN_IMAGE_ARCH = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                        temperal_downsample=[False, True, True])  # lists: the class concatenates them


@dataclass(frozen=True)
class TeacherPreset:
    repo_id: str  # Hub repo id, or an absolute path for weights that ship with tinyae
    latent_channels: int
    scaling_factor: float | None  # None: read the latent space from the VAE (config factors, batch norm, ...)
    shift_factor: float = 0.0
    subfolder: str | None = None
    family: str = "sd"  # file-name family for TAESD-format exports
    fp16_safe: bool = False
    arch: dict = field(default_factory=dict)  # constructor arguments of `vae_class` for weights-free builds
    note: str = ""
    vae_class: str = "AutoencoderKL"  # the diffusers class (also read from the VAE's config when loading)
    base_model: str | None = None  # for model cards when repo_id is not on the Hub: the model it stands for


TEACHERS: dict[str, TeacherPreset] = {}


def register_teacher(name: str, preset: TeacherPreset) -> None:
    TEACHERS[name] = preset


# Scalar spaces, z = (raw - shift) * scale: what SD/SDXL/SD3/FLUX.1 pipelines and TAESD/taesdxl/taesd3/taef1 use.
register_teacher("sd", TeacherPreset("stabilityai/sd-vae-ft-mse", 4, 0.18215, family="sd", arch=_SD_ARCH))
register_teacher("sd-ema", TeacherPreset("stabilityai/sd-vae-ft-ema", 4, 0.18215, family="sd", arch=_SD_ARCH))
register_teacher(
    "sdxl",
    TeacherPreset("madebyollin/sdxl-vae-fp16-fix", 4, 0.13025, family="sdxl", fp16_safe=True, arch=_SD_ARCH),
)
register_teacher(
    "sd3",
    TeacherPreset(
        "stabilityai/stable-diffusion-3-medium-diffusers", 16, 1.5305, 0.0609, subfolder="vae", family="sd3",
        arch=_SD3_ARCH, note="gated: accept the licence on the Hub and log in first",
    ),
)
register_teacher(
    "flux",
    TeacherPreset("black-forest-labs/FLUX.1-schnell", 16, 0.3611, 0.1159, subfolder="vae", family="flux", arch=_SD3_ARCH),
)
# FLUX.2 (klein and dev share the VAE): the student reads the batch-norm-normalised latent the transformer sees,
# unpatchified to 32 channels at 1/8 (PatchNormSpace from the VAE's own `bn`), which is what TAEF2 reads.
register_teacher(
    "flux2",
    TeacherPreset(
        "black-forest-labs/FLUX.2-klein-4B", 32, None, subfolder="vae", family="flux2", arch=_FLUX2_ARCH,
        vae_class="AutoencoderKLFlux2", note="FLUX.2 [klein] 4B's VAE, the same as FLUX.2 [dev]'s",
    ),
)
register_teacher(
    "flux2-dev",
    TeacherPreset(
        "black-forest-labs/FLUX.2-dev", 32, None, subfolder="vae", family="flux2", arch=_FLUX2_ARCH,
        vae_class="AutoencoderKLFlux2", note="gated: accept the FLUX.2 [dev] licence on the Hub and log in first",
    ),
)
# Sana: DC-AE f32c32, scalar z = raw * 0.41407 (SanaPipeline decodes latents / scaling_factor), as taesana reads.
register_teacher(
    "sana",
    TeacherPreset(
        "mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers", 32, 0.41407, family="sana", arch=_DCAE_SANA_ARCH,
        vae_class="AutoencoderDC", note="DC-AE f32c32 of Sana 1.0 / 1.5",
    ),
)
# Qwen-Image: its video VAE on single frames, z = (raw - latents_mean) / latents_std per channel (config values),
# which QwenImagePipeline inverts before vae.decode and TAEW2.1 reads.
register_teacher(
    "qwen-image",
    TeacherPreset(
        "Qwen/Qwen-Image", 16, None, subfolder="vae", family="qwen-image", arch=_QWEN_IMAGE_ARCH,
        vae_class="AutoencoderKLQwenImage", note="Qwen-Image's VAE (the Wan 2.1 VAE), one frame at a time",
    ),
)
register_teacher(
    "taef2",
    TeacherPreset(
        str(weights_dir() / "taesd-upstream" / "taef2"), 32, 1.0, family="flux2", vae_class="TinyAutoencoder",
        base_model="black-forest-labs/FLUX.2-klein-4B",
        note="the published TAEF2 pair (madebyollin/taesd, MIT): a sharp, real FLUX.2-space teacher that runs on a CPU",
    ),
)
register_teacher(
    "tiny",
    TeacherPreset(
        str(weights_dir() / "tiny-teacher"), 4, None, family="sd",
        note="small AutoencoderKL shipped with tinyae for offline runs; factors come from its config",
    ),
)
