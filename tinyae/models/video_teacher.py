"""Video teachers: frozen diffusers video VAEs, in the latent convention of their pipelines.

A video teacher encodes (B, 3, F, H, W) clips in [-1, 1] to the latents its pipeline's
transformer sees and decodes them back, the clip-wise counterpart of tinyae.models.teacher
(which feeds these VAEs one frame at a time). Each convention was read from the pipeline in
diffusers (0.42), where the latents are turned back into the VAE's own before `vae.decode`:

- WanPipeline (Wan 2.1, Wan 2.2 TI2V-5B): `latents / (1 / config.latents_std) + config.latents_mean`,
  so z = (raw - mean_c) / std_c;
- HunyuanVideoPipeline: `latents / vae.config.scaling_factor`, so z = raw * 0.476986;
- LTXPipeline: `_denormalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)`,
  z = (raw - mean_c) * scaling_factor / std_c with the VAE's buffers;
- CogVideoXPipeline: `1 / vae.config.scaling_factor * latents`, so z = raw * scaling_factor (1.15258426 for
  CogVideoX-2b, 0.7 for 5b: read from the config).

The spaces are tinyae.models.latent_space's, applied per frame. Frames: 1 + 4k -> 1 + k
latents (LTX: 1 + 8k -> 1 + k; CogVideoX: 1 + 4k -> 1 + k too, but only 1 + 8k decode back to their length:
`VideoTeacher.frame_multiple`), and Wan 2.2 / LTX patchify space on top of the 8x.
Presets are a registry (`VIDEO_TEACHERS`); anything else is a Hub id or a local folder of one
of `VIDEO_VAE_CLASSES`.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import torch
from torch import Tensor, nn

from tinyae.config import TeacherConfig
from tinyae.errors import ConfigError, TeacherLoadError
from tinyae.models.latent_space import LatentSpace, PerChannelSpace, ScalarSpace
from tinyae.models.presets import TEACHERS
from tinyae.models.video_student import VIDEO_MODELS
from tinyae.utils.dtypes import DTYPES, frozen_dtype
from tinyae.utils.hub_access import (
    hub_unreachable,
    loading_vae,
    local_path_typo,
    looks_like_repo_id,
    no_config_message,
    quiet_hub,
)
from tinyae.utils.resources import weights_dir

VIDEO_VAE_CLASSES = ("AutoencoderKLWan", "AutoencoderKLHunyuanVideo", "AutoencoderKLLTXVideo", "AutoencoderKLCogVideoX")

# Wan 2.2 TI2V-5B's VAE as diffusers' conversion configures it: residual blocks, 2x2 patches in and out (12 ch),
# 48 latent channels at 16x. Its latents_mean/std come with the real config; weights-free builds use 0 / 1.
_WAN22_ARCH = dict(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12, out_channels=12,
                   patch_size=2, scale_factor_spatial=16, latents_mean=[0.0] * 48, latents_std=[1.0] * 48)


@dataclass(frozen=True)
class VideoTeacherPreset:
    repo_id: str
    vae_class: str
    taehv_model: str  # the TAEHV layout its students take (tinyae.models.video_student.VIDEO_MODELS)
    subfolder: str | None = "vae"
    arch: dict = field(default_factory=dict)  # constructor arguments for weights-free builds ({}: the defaults)
    note: str = ""
    stands_for: str | None = None  # a small teacher's full-size model: runs also time the student against its build


VIDEO_TEACHERS: dict[str, VideoTeacherPreset] = {}


def register_video_teacher(name: str, preset: VideoTeacherPreset) -> None:
    VIDEO_TEACHERS[name] = preset


register_video_teacher("wan2.1", VideoTeacherPreset("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "AutoencoderKLWan", "taew2_1",
                                                    note="Wan 2.1 (all sizes) and Qwen-Image share this VAE"))
register_video_teacher("wan2.2", VideoTeacherPreset("Wan-AI/Wan2.2-TI2V-5B-Diffusers", "AutoencoderKLWan", "taew2_2",
                                                    arch=_WAN22_ARCH, note="Wan 2.2 TI2V-5B: 48 channels, 16x"))
register_video_teacher("hunyuan-video", VideoTeacherPreset("hunyuanvideo-community/HunyuanVideo",
                                                           "AutoencoderKLHunyuanVideo", "taehv"))
register_video_teacher("ltx-video", VideoTeacherPreset("Lightricks/LTX-Video", "AutoencoderKLLTXVideo", "taeltx_2",
                                                       note="128 channels, 32x space, 8x time"))
register_video_teacher("cogvideox", VideoTeacherPreset("THUDM/CogVideoX-2b", "AutoencoderKLCogVideoX", "taecvx"))
# A small real AutoencoderKLWan trained here on pan-and-zoom clips of photos (tinyae.training.tiny_teacher,
# weights/tiny-wan/README.md): the offline teacher of the video-smoke recipe and the tests, Wan 2.1's layout.
register_video_teacher("tiny-wan", VideoTeacherPreset(str(weights_dir() / "tiny-wan"), "AutoencoderKLWan", "taew2_1",
                                                      subfolder=None, note="small AutoencoderKLWan shipped with tinyae",
                                                      stands_for="wan2.1"))


def video_latent_space(vae: nn.Module) -> LatentSpace:
    """The space the VAE's pipeline hands its transformer (see the module docstring)."""
    name, config = type(vae).__name__, vae.config
    if name == "AutoencoderKLWan":
        return PerChannelSpace(config.latents_mean, config.latents_std, 1.0)
    if name == "AutoencoderKLLTXVideo":
        return PerChannelSpace(vae.latents_mean.tolist(), vae.latents_std.tolist(), config.scaling_factor)
    if name in ("AutoencoderKLHunyuanVideo", "AutoencoderKLCogVideoX"):
        return ScalarSpace(config.scaling_factor)
    raise TeacherLoadError(f"'{name}' is not a video VAE tinyae knows; use one of {', '.join(VIDEO_VAE_CLASSES)}.")


def _per_frame(space_fn, x: Tensor) -> Tensor:
    b, c, t, h, w = x.shape
    frames = space_fn(x.transpose(1, 2).reshape(b * t, c, h, w))
    return frames.reshape(b, t, *frames.shape[1:]).transpose(1, 2)


class VideoTeacher(nn.Module):
    """A frozen video VAE plus its pipeline's latent space; clips are (B, 3, F, H, W) in [-1, 1]."""

    def __init__(self, vae: nn.Module, name: str = "custom", taehv_model: str | None = None):
        super().__init__()
        if type(vae).__name__ not in VIDEO_VAE_CLASSES:
            raise TeacherLoadError(f"'{type(vae).__name__}' is not a video VAE tinyae knows; use one of "
                                   f"{', '.join(VIDEO_VAE_CLASSES)}.")
        self.vae = vae.eval().requires_grad_(False)
        self.latent_space = video_latent_space(vae)
        self.name = name
        self.taehv_model = taehv_model

    def train(self, mode: bool = True) -> "VideoTeacher":
        return super().train(False)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @property
    def latent_channels(self) -> int:
        config = self.vae.config
        return int(config.get("z_dim") or config["latent_channels"])

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def downscale(self) -> int:
        """Pixels per latent pixel, patches included (Wan 2.2: 16, LTX: 32)."""
        vae, config = self.vae, self.vae.config
        ratio = getattr(vae, "spatial_compression_ratio", None) or config.get("scale_factor_spatial")
        return int(ratio or 2 ** (len(config.get("block_out_channels") or config.get("down_block_types")) - 1))

    @property
    def size_multiple(self) -> int:
        return self.downscale

    @property
    def time_downscale(self) -> int:
        """Frames per latent frame after the first (4; LTX: 8)."""
        vae, config = self.vae, self.vae.config
        return int(getattr(vae, "temporal_compression_ratio", None) or config.get("temporal_compression_ratio")
                   or config.get("scale_factor_temporal") or 4)

    @property
    def frame_multiple(self) -> int:
        """Clips must have 1 + k x this many frames for the round trip to keep their length (1: any the student
        takes). CogVideoX's encoder reads frames in batches of 8 and its decoder gives 4T frames for an even
        latent count T (5 frames -> 2 latents -> 8 frames), so it takes 1 + 8k, as CogVideoX's 49-frame clips are."""
        if type(self.vae).__name__ == "AutoencoderKLCogVideoX":
            return int(self.vae.config.temporal_compression_ratio) * int(self.vae.num_latent_frames_batch_size)
        return 1

    @property
    def family(self) -> None:
        """Video students have no TAESD-pair family: they ship as TAEHV files (tinyae.shipping.taehv)."""
        return None

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """(B, 3, F, H, W) in [-1, 1] -> (B, C, T, h, w) latents in the pipeline's space (posterior mean)."""
        raw = self.vae.encode(video.to(self.dtype)).latent_dist.mean.float()
        return _per_frame(self.latent_space.from_raw, raw)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents in the pipeline's space -> (B, 3, F, H, W) in [-1, 1] (float32)."""
        raw = _per_frame(self.latent_space.to_raw, latents.float()).to(self.dtype)
        return self.vae.decode(raw).sample.float()


def check_clip_frames(teacher: VideoTeacher, frames: int, time_factor: int, option: str = "data.frames") -> None:
    """Refuse, before any clip is read, a frame count the student's time factor or the teacher's frame batching
    cannot take whole (CogVideoX: 1 + 8k, not the 1 + 4k of its latents)."""
    step = math.lcm(time_factor, teacher.frame_multiple)
    if frames < 1 or (frames - 1) % step:
        why = (f"the teacher '{teacher.name}' ({type(teacher.vae).__name__}) encodes 1 + {step}k frames whole"
               if step != time_factor else f"video VAEs take 1 + {step}k frames")
        raise ConfigError(f"{option} {frames} does not encode to whole latents: {why} ({1 + step}, {1 + 2 * step}, "
                          f"{1 + 3 * step}, ...); pick one of those.")


def _vae_class(name: str) -> type[nn.Module]:
    if name not in VIDEO_VAE_CLASSES:
        raise TeacherLoadError(f"'{name}' is not a video VAE tinyae knows; use one of {', '.join(VIDEO_VAE_CLASSES)}.")
    return getattr(diffusers, name)


def load_video_teacher(name: str, subfolder: str | None = None, dtype: str = "fp32") -> VideoTeacher:
    """A preset (`wan2.1`, `wan2.2`, `hunyuan-video`, `ltx-video`, `cogvideox`), Hub repo id or local folder."""
    preset = VIDEO_TEACHERS.get(name)
    source = preset.repo_id if preset else name
    subfolder = subfolder if subfolder is not None else (preset.subfolder if preset else None)
    if preset is None and (typo := local_path_typo(source)):
        raise TeacherLoadError(f"No video VAE at '{source}' (nothing there, though '{typo}' exists: a typo?).")
    if preset is None and not Path(source).exists() and source.count("/") != 1:
        raise TeacherLoadError(f"Unknown video teacher '{source}': pass a preset ({', '.join(VIDEO_TEACHERS)}), a "
                               "Hub repo id (owner/name) or a local diffusers VAE folder.")
    with loading_vae(source, "the video teacher VAE", subfolder):
        if Path(source).exists():
            config_path = Path(source) / (subfolder or "") / "config.json"
            if not config_path.is_file():
                raise TeacherLoadError(no_config_message(config_path.parent))
            class_name = json.loads(config_path.read_text()).get("_class_name")
        else:
            class_name = preset.vae_class if preset else diffusers.AutoencoderKLWan.load_config(
                source, subfolder=subfolder, local_files_only=hub_unreachable()).get("_class_name")
        vae = _vae_class(class_name).from_pretrained(
            source, subfolder=subfolder, torch_dtype=DTYPES[dtype],
            local_files_only=not Path(source).exists() and hub_unreachable())
    return VideoTeacher(vae, name, preset.taehv_model if preset else None)


def is_video_teacher(config: TeacherConfig | str) -> bool:
    """True when the recipe's teacher (or teacher name) is a video VAE: a video preset, or a folder or Hub repo whose
    config.json names one of VIDEO_VAE_CLASSES (a Hub config is fetched once, or read from the Hugging Face cache
    offline; when neither can be had the teacher is taken for an image VAE, with a warning saying so)."""
    config = TeacherConfig(name=config) if isinstance(config, str) else config
    if config.name in VIDEO_TEACHERS:
        return True
    if config.name in TEACHERS:
        return False
    if looks_like_repo_id(config.name) and not Path(config.name).exists():
        return _hub_class_name(config.name, config.subfolder, config.revision) in VIDEO_VAE_CLASSES
    config_path = Path(config.name) / (config.subfolder or "") / "config.json"
    if not config_path.is_file():
        return False
    try:
        return json.loads(config_path.read_text()).get("_class_name") in VIDEO_VAE_CLASSES
    except (OSError, ValueError):
        return False


@functools.lru_cache(maxsize=64)
def _hub_class_name(repo_id: str, subfolder: str | None, revision: str | None) -> str | None:
    """The `_class_name` of a Hub repo's config.json (a few hundred bytes), or None when it cannot be had."""
    from huggingface_hub import hf_hub_download

    offline = hub_unreachable()
    try:
        with quiet_hub():
            path = hf_hub_download(repo_id, "config.json", subfolder=subfolder, revision=revision,
                                   local_files_only=offline)
        return json.loads(Path(path).read_text()).get("_class_name")
    except Exception:  # huggingface_hub raises many types for offline / unknown / gated; the loader says which
        if offline:
            where = f"{repo_id}/{subfolder}" if subfolder else repo_id
            warnings.warn(f"Cannot read the config.json of '{where}' (offline, and not in the Hugging Face cache), so "
                          "it is taken for an image VAE; for a video VAE, download it once "
                          f"(huggingface-cli download {repo_id}) or pass a local folder.", stacklevel=3)
        return None


def load_video_teacher_for(config: TeacherConfig, device: str | torch.device = "cpu") -> VideoTeacher:
    """The recipe's video teacher on `device`; refuses image-teacher settings it cannot honour."""
    if config.scaling_factor is not None or config.shift_factor is not None or config.estimate_factors:
        raise TeacherLoadError(f"teacher.scaling_factor, shift_factor and estimate_factors do not apply to the video "
                               f"teacher '{config.name}': its latent space is its pipeline's (tinyae.models."
                               "video_teacher); drop them.")
    if config.sample:
        raise TeacherLoadError("teacher.sample does not apply to a video teacher: students learn its posterior mean; "
                               "drop it.")
    dtype = frozen_dtype(device, fp16_safe=False) if config.dtype == "auto" else config.dtype  # none known fp16-safe
    return load_video_teacher(config.name, config.subfolder, dtype).to(device)


def build_video_teacher(name: str, dtype: str = "fp32", seed: int = 0, **overrides) -> VideoTeacher:
    """A preset's architecture with random weights (`overrides` change its config): for speed, never quality."""
    preset = VIDEO_TEACHERS.get(name)
    if preset is None:
        raise TeacherLoadError(f"Unknown video teacher '{name}'; known: {', '.join(VIDEO_TEACHERS)}.")
    torch.manual_seed(seed)
    vae = _vae_class(preset.vae_class)(**(preset.arch | overrides))
    nn.Module.to(vae, DTYPES[dtype])
    return VideoTeacher(vae, f"{name} (random weights)", preset.taehv_model)


def space_vae_class(taehv_name: str) -> str | None:
    """The VAE class of the latent space a published TAEHV model stands for (None: no preset of it here)."""
    preset = VIDEO_TEACHERS.get(VIDEO_MODELS[taehv_name].teacher)
    return preset.vae_class if preset else None


def refuse_other_space(taehv_name: str, teacher: VideoTeacher) -> None:
    """student.taehv names a latent space as well as a layout (a 'taehv' file is decoded as HunyuanVideo's
    latents): it must be the teacher's, not only of its channels and downscale."""
    vae_class, wanted = type(teacher.vae).__name__, space_vae_class(taehv_name)
    same_space = teacher.taehv_model is None or (  # a layout variant (_super, wide) reads the same latents
        VIDEO_MODELS[teacher.taehv_model].teacher == VIDEO_MODELS[taehv_name].teacher)
    if not same_space or wanted not in (None, vae_class):
        students = f" whose students are '{teacher.taehv_model}'" if teacher.taehv_model else ""
        raise ConfigError(f"student.taehv '{taehv_name}' stands for {VIDEO_MODELS[taehv_name].note}'s latent space, "
                          f"but the teacher '{teacher.name}' is an {vae_class}{students}; drop student.taehv or set "
                          "it to the teacher's.")
