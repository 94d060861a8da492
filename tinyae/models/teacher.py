"""The teacher: a frozen diffusers VAE that speaks the latents its diffusion model sees.

    z = latent_space.from_raw(vae.encode(x))        (encode)
    x = vae.decode(latent_space.to_raw(z))          (decode)

The latent space is the family's (tinyae.models.latent_space: scalar factors for SD to FLUX.1
and DC-AE, per-channel statistics for Qwen-Image, FLUX.2's patch batch norm), so students learn
what a pipeline hands its VAE and previews need no extra scaling. Any diffusers VAE class in
`VAE_CLASSES` works, its class read from the VAE's config; video VAEs (Qwen-Image, Wan) see
images as one-frame videos. Presets live in a registry (`TEACHERS`), timm-style; anything else
is a Hub repo id or a local folder.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from torch import nn

from tinyae.config import TeacherConfig
from tinyae.errors import TeacherLoadError
from tinyae.models.formats import is_pair, load_student
from tinyae.models.latent_space import IDENTITY, LatentSpace, PatchNormSpace, PerChannelSpace, ScalarSpace
from tinyae.models.presets import TEACHERS, TeacherPreset
from tinyae.models.tiny_autoencoder import TinyAutoencoder, diffusers_model
from tinyae.models.video_teacher import VIDEO_TEACHERS
from tinyae.utils.dtypes import DTYPES, frozen_dtype
from tinyae.utils.hub_access import hub_unreachable, loading_vae, local_path_typo, no_config_message


@dataclass(frozen=True)
class VaeClass:
    """How tinyae drives one diffusers VAE class."""

    space: str  # where its latent space comes from: "scalar" (config factors), "per-channel" (config latents_mean/
    # std), "patch-norm" (its `bn` buffers) or "identity" (a tiny autoencoder already writes its space)
    frames: bool = False  # a video VAE: images go in as one-frame videos (B, C, 1, H, W)
    family: str | None = None  # the export family of a VAE of this class outside the presets
    deterministic: bool = False  # encodes to latents, not to a posterior


VAE_CLASSES: dict[str, VaeClass] = {
    "AutoencoderKL": VaeClass("scalar"),  # per-channel when its config has latents_mean / latents_std
    "AutoencoderDC": VaeClass("scalar", family="sana", deterministic=True),
    "AutoencoderKLFlux2": VaeClass("patch-norm", family="flux2"),
    "AutoencoderKLQwenImage": VaeClass("per-channel", frames=True, family="qwen-image"),
    "AutoencoderKLWan": VaeClass("per-channel", frames=True, family="qwen-image"),
    "AutoencoderTiny": VaeClass("identity", deterministic=True),
    "TinyAutoencoder": VaeClass("identity", deterministic=True),
}


def vae_class_info(vae: nn.Module) -> VaeClass:
    """The entry of the VAE's class, or of the nearest supported class it derives from."""
    for cls in type(vae).__mro__:
        if cls.__name__ in VAE_CLASSES:
            return VAE_CLASSES[cls.__name__]
    raise TeacherLoadError(f"Teacher VAE class '{type(vae).__name__}' is not supported; tinyae distills from "
                           f"{', '.join(sorted(VAE_CLASSES))}.")


class Teacher(nn.Module):
    """A frozen VAE plus the latent space that maps its raw latents to what the diffusion model sees.

    `scaling_factor` / `shift_factor` give a scalar space; pass `latent_space` for any other.
    """

    def __init__(self, vae: nn.Module, scaling_factor: float = 1.0, shift_factor: float = 0.0, name: str = "custom",
                 sample: bool = False, family: str = "sd", latent_space: LatentSpace | None = None):
        super().__init__()
        self.kind = vae_class_info(vae)
        self.vae = vae.eval().requires_grad_(False)
        self.latent_space = latent_space if latent_space is not None else ScalarSpace(scaling_factor, shift_factor)
        self.name = name
        self.sample = sample
        self.family = family

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)  # frozen, always

    @property
    def scaling_factor(self) -> float | None:
        """The scalar factor of a scalar latent space (None for per-channel and patch-norm spaces)."""
        return self.latent_space.scaling_factor if isinstance(self.latent_space, ScalarSpace) else None

    @property
    def shift_factor(self) -> float | None:
        return self.latent_space.shift_factor if isinstance(self.latent_space, ScalarSpace) else None

    @property
    def deterministic(self) -> bool:
        """No posterior to sample from: tiny autoencoders and DC-AE."""
        return self.kind.deterministic

    @property
    def latent_channels(self) -> int:
        config = self.vae.config
        return int(config.get("latent_channels") or config["z_dim"])

    @property
    def downscale(self) -> int:
        ratio = getattr(self.vae, "spatial_compression_ratio", None)  # DC-AE, Qwen-Image, Wan
        return int(ratio) if ratio else 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sides the teacher takes: multiples of its downscale, times FLUX.2's 2x2 patch."""
        return self.downscale * (self.latent_space.patch if isinstance(self.latent_space, PatchNormSpace) else 1)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def _vae_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, self.dtype)
        return x.unsqueeze(2) if self.kind.frames else x

    def _vae_output(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, :, 0] if self.kind.frames else x).float()

    @torch.no_grad()
    def encode_raw(self, images: torch.Tensor, sample: bool | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [-1, 1] -> the VAE's own latents (posterior mean unless sampling), float32."""
        out = self.vae.encode(self._vae_input(images))
        if hasattr(out, "latent_dist"):
            dist = out.latent_dist
            raw = dist.sample(generator) if (self.sample if sample is None else sample) else dist.mean
        else:  # deterministic: DC-AE's `latent`, the tiny autoencoders' `latents`
            raw = out.latent if hasattr(out, "latent") else out.latents
        return self._vae_output(raw)

    @torch.no_grad()
    def decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        """The VAE's own latents -> images in [-1, 1] (float32)."""
        return self._vae_output(self.vae.decode(self._vae_input(raw)).sample)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, sample: bool | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [-1, 1] -> latents in the family's space (posterior mean unless sampling)."""
        return self.latent_space.from_raw(self.encode_raw(images, sample, generator))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents in the family's space -> images in [-1, 1] (float32)."""
        return self.decode_raw(self.latent_space.to_raw(latents.to(self.device)))

    @torch.no_grad()
    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw posterior (mean, logvar) of a KL VAE, for diagnostics."""
        out = self.vae.encode(self._vae_input(images))
        if not hasattr(out, "latent_dist"):
            raise TypeError(f"A {type(self.vae).__name__} teacher is deterministic: it has no posterior variance.")
        return self._vae_output(out.latent_dist.mean), self._vae_output(out.latent_dist.logvar)


def _vae_class(class_name: str) -> type[nn.Module]:
    if class_name not in VAE_CLASSES:
        raise TeacherLoadError(
            f"Teacher VAE class '{class_name}' is not supported yet; tinyae distills from {', '.join(sorted(VAE_CLASSES))}."
        )
    return TinyAutoencoder if class_name == "TinyAutoencoder" else getattr(diffusers, class_name)


def _read_config(source: str, subfolder: str | None, revision: str | None) -> dict:
    local = Path(source)
    if local.exists():
        cfg_path = local / (subfolder or "") / "config.json"
        if not cfg_path.exists():
            raise TeacherLoadError(no_config_message(cfg_path.parent))
        return json.loads(cfg_path.read_text())
    return dict(diffusers.AutoencoderKL.load_config(source, subfolder=subfolder, revision=revision,
                                          local_files_only=hub_unreachable()))


def load_teacher(config: TeacherConfig | str, device: str | torch.device = "cpu") -> Teacher:
    """Build a frozen Teacher from a preset name, Hub repo id or local folder, in `config.dtype` (auto:
    `frozen_dtype` on `device`, fp16 for the presets known to be fp16-safe)."""
    if isinstance(config, str):
        config = TeacherConfig(name=config)
    preset = TEACHERS.get(config.name)
    dtype = frozen_dtype(device, preset is not None and preset.fp16_safe) if config.dtype == "auto" else config.dtype
    source = preset.repo_id if preset else config.name
    subfolder = config.subfolder if config.subfolder is not None else (preset.subfolder if preset else None)
    if preset is None and (typo := local_path_typo(source)):
        raise TeacherLoadError(f"No teacher VAE at '{source}' (nothing there, though '{typo}' exists: a typo?): pass "
                               f"a local diffusers VAE folder, a preset ({', '.join(TEACHERS)}) or a Hub repo id.")
    if preset is None and not Path(source).exists() and source.count("/") != 1:
        raise TeacherLoadError(
            f"Unknown teacher '{source}': pass an image preset ({', '.join(TEACHERS)}), a video preset "
            f"({', '.join(VIDEO_TEACHERS)}), a Hub repo id (owner/name) or a local diffusers VAE folder."
        )
    if preset is not None and Path(preset.repo_id).is_absolute() and not (Path(source).exists() or is_pair(source)):
        raise TeacherLoadError(f"The shipped teacher '{config.name}' is missing at {source}; restore weights/ from "
                               "the repository.")
    if is_pair(source):  # a tiny autoencoder as the teacher: its latents are the space the student learns
        student = load_student(source, preset.family if preset else None)
        family = preset.family if preset else student.family
        vae = nn.Module.to(diffusers_model(student, family), DTYPES[dtype])
        family = family or guess_family(vae, IDENTITY)
        return Teacher(vae, name=config.name, family=family,
                       latent_space=resolve_space(vae, config, preset)).to(device)
    with loading_vae(source, "the teacher VAE", subfolder):
        cfg = _read_config(source, subfolder, config.revision)
        cls = _vae_class(cfg.get("_class_name", "AutoencoderKL"))
        vae = cls.from_pretrained(
            source, subfolder=subfolder, revision=config.revision, torch_dtype=DTYPES[dtype],
            local_files_only=not Path(source).exists() and hub_unreachable(),
        )
    if dtype == "fp16" and preset is not None and not preset.fp16_safe:
        warnings.warn(f"Teacher '{config.name}' is not known to be fp16-safe (its activations can overflow to NaN); "
                      "use --teacher.dtype bf16 or fp32 if losses turn NaN.", stacklevel=2)
    space = resolve_space(vae, config, preset)
    family = preset.family if preset else guess_family(vae, space)
    return Teacher(vae, name=config.name, sample=config.sample, family=family, latent_space=space).to(device)


def resolve_space(vae: nn.Module, config: TeacherConfig, preset: TeacherPreset | None) -> LatentSpace:
    """The teacher's latent space: CLI/recipe factors > preset factors > what the VAE itself says.

    Scalar spaces take both factors from there; per-channel spaces (Qwen-Image, Wan, SDXL
    fine-tunes with latents_mean/std) take their statistics from the VAE config and only the
    scaling factor from overrides; FLUX.2's comes from the VAE's batch norm and takes none.
    """
    kind, cfg = vae_class_info(vae).space, vae.config
    if kind == "scalar" and cfg.get("latents_mean") is not None and cfg.get("latents_std") is not None:
        kind = "per-channel"
    if preset is not None and preset.scaling_factor is not None:
        scaling, shift = preset.scaling_factor, preset.shift_factor
    elif kind == "identity":
        scaling, shift = 1.0, 0.0
    else:
        scaling = cfg.get("scaling_factor", 0.18215 if kind == "scalar" else 1.0)
        shift = cfg.get("shift_factor") or 0.0
    if config.scaling_factor is not None:
        scaling = config.scaling_factor
    if config.shift_factor is not None:
        shift = config.shift_factor
    if kind in ("scalar", "identity"):
        return ScalarSpace(scaling, shift)
    name = type(vae).__name__
    if kind == "patch-norm":
        if config.scaling_factor is not None or config.shift_factor is not None:
            raise TeacherLoadError(f"teacher.scaling_factor / shift_factor do not apply to a {name}: FLUX.2's latent "
                                   "space is set by the VAE's own batch-norm statistics; drop the overrides.")
        return PatchNormSpace.of_batch_norm(vae.bn, int(cfg.get("patch_size", (2, 2))[0]))
    if config.shift_factor is not None:
        raise TeacherLoadError(f"teacher.shift_factor does not apply to a {name}: its latent space shifts each "
                               "channel by the config's latents_mean; drop the override.")
    return PerChannelSpace(cfg["latents_mean"], cfg["latents_std"], scaling)


def guess_family(vae: nn.Module, space: LatentSpace) -> str:
    """Export file names for a VAE outside the presets: by class, by channels, and FLUX.1 vs SD3 by their shift."""
    config = vae.config
    if config.get("family"):  # a TinyAutoencoder saved for a family
        return config["family"]
    by_class = vae_class_info(vae).family
    if by_class is not None:
        return by_class
    if config.get("latent_channels", 4) != 16:
        return "sd"
    shift = space.shift_factor if isinstance(space, ScalarSpace) else 0.0
    return "flux" if abs(shift - TEACHERS["flux"].shift_factor) < 1e-3 else "sd3"


def build_teacher(name: str, device: str | torch.device = "cpu", dtype: str = "fp32", seed: int = 0) -> Teacher:
    """A preset's architecture with random weights: for speed comparisons, never for quality."""
    preset = TEACHERS.get(name)
    if preset is None or not preset.arch:
        raise TeacherLoadError(f"No weights-free architecture for '{name}'; known: "
                               f"{', '.join(n for n, p in TEACHERS.items() if p.arch)}.")
    torch.manual_seed(seed)
    vae = _vae_class(preset.vae_class)(**preset.arch)
    nn.Module.to(vae, DTYPES[dtype])  # diffusers' own .to() warns about fp32 modules on every cast
    return Teacher(vae, name=f"{name} (random weights)", family=preset.family,
                   latent_space=resolve_space(vae, TeacherConfig(name=name), preset)).to(device)
