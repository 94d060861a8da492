"""Teacher presets: a registry of named VAEs (timm-style), each with its latent convention.

A preset names where the VAE lives (a Hub repo, or weights that ship with tinyae), its
diffusion-space factors, the family its exports are named for, and its architecture
for weights-free builds (benchmarks and tests). Register your own with `register_teacher`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tinyae.utils.resources import weights_dir

# AutoencoderKL architectures of the families, for weights-free builds (benchmarks, tests).
_SD_ARCH = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
)
_SD3_ARCH = dict(_SD_ARCH, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)


@dataclass(frozen=True)
class TeacherPreset:
    repo_id: str  # Hub repo id, or an absolute path for weights that ship with tinyae
    latent_channels: int
    scaling_factor: float | None  # None: read the factors from the VAE's own config
    shift_factor: float = 0.0
    subfolder: str | None = None
    family: str = "sd"  # file-name family for TAESD-format exports
    fp16_safe: bool = False
    arch: dict = field(default_factory=dict)
    note: str = ""


TEACHERS: dict[str, TeacherPreset] = {}


def register_teacher(name: str, preset: TeacherPreset) -> None:
    TEACHERS[name] = preset


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
register_teacher(
    "taef2",
    TeacherPreset(
        str(weights_dir() / "taesd-upstream" / "taef2"), 32, 1.0, family="flux2",
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
