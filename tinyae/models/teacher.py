"""The teacher: a frozen diffusers VAE that speaks diffusion-space latents.

    z = (raw - shift_factor) * scaling_factor      (encode)
    raw = z / scaling_factor + shift_factor        (decode)

Students learn the latents the diffusion model sees, so previews of a
pipeline's latents need no extra scaling. Presets live in a registry
(`TEACHERS`), timm-style; anything else is a Hub repo id or a local folder.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from tinyae.config import TeacherConfig
from tinyae.errors import TeacherLoadError
from tinyae.models.formats import family_of_pair, is_pair, load_student
from tinyae.models.presets import TEACHERS, TeacherPreset
from tinyae.models.tiny_autoencoder import diffusers_model
from tinyae.utils.dtypes import DTYPES
from tinyae.utils.hub_access import hub_unreachable, local_path_typo, not_on_hub_message, quiet_hub


class Teacher(nn.Module):
    """A frozen VAE plus the factors that map its raw latents to diffusion space."""

    def __init__(self, vae: nn.Module, scaling_factor: float, shift_factor: float = 0.0, name: str = "custom",
                 sample: bool = False, family: str = "sd"):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.scaling_factor = float(scaling_factor)
        self.shift_factor = float(shift_factor)
        self.name = name
        self.sample = sample
        self.family = family
        self.is_tiny = type(vae).__name__ in ("AutoencoderTiny", "TinyAutoencoder")  # deterministic

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)  # frozen, always

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @torch.no_grad()
    def encode(self, images: torch.Tensor, sample: bool | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [-1, 1] -> diffusion-space latents (posterior mean unless sampling)."""
        x = images.to(self.device, self.dtype)
        if self.is_tiny:
            raw = self.vae.encode(x).latents
        else:
            dist = self.vae.encode(x).latent_dist
            raw = dist.sample(generator) if (self.sample if sample is None else sample) else dist.mean
        return ((raw.float() - self.shift_factor) * self.scaling_factor)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Diffusion-space latents -> images in [-1, 1] (float32)."""
        raw = latents.float() / self.scaling_factor + self.shift_factor
        return self.vae.decode(raw.to(self.device, self.dtype)).sample.float()

    @torch.no_grad()
    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw posterior (mean, logvar) of a KL VAE, for diagnostics."""
        if self.is_tiny:
            raise TypeError("An AutoencoderTiny teacher is deterministic: it has no posterior variance.")
        dist = self.vae.encode(images.to(self.device, self.dtype)).latent_dist
        return dist.mean.float(), dist.logvar.float()


def _vae_class(class_name: str):
    import diffusers

    supported = {"AutoencoderKL", "AutoencoderTiny"}
    if class_name not in supported:
        raise TeacherLoadError(
            f"Teacher VAE class '{class_name}' is not supported yet; tinyae distills from {', '.join(sorted(supported))}."
        )
    return getattr(diffusers, class_name)


def _read_config(source: str, subfolder: str | None, revision: str | None) -> dict:
    local = Path(source)
    if local.exists():
        cfg_path = local / (subfolder or "") / "config.json"
        if not cfg_path.exists():
            raise TeacherLoadError(
                f"'{cfg_path.parent}' is not a diffusers VAE folder (no config.json); pass a folder saved with "
                "save_pretrained, or its parent with --teacher.subfolder."
            )
        return json.loads(cfg_path.read_text())
    from diffusers import AutoencoderKL

    return dict(AutoencoderKL.load_config(source, subfolder=subfolder, revision=revision,
                                          local_files_only=hub_unreachable()))


def load_teacher(config: TeacherConfig | str, device: str | torch.device = "cpu") -> Teacher:
    """Build a frozen Teacher from a preset name, Hub repo id or local folder."""
    if isinstance(config, str):
        config = TeacherConfig(name=config)
    preset = TEACHERS.get(config.name)
    source = preset.repo_id if preset else config.name
    subfolder = config.subfolder if config.subfolder is not None else (preset.subfolder if preset else None)
    if preset is None and (typo := local_path_typo(source)):
        raise TeacherLoadError(f"No teacher VAE at '{source}' (nothing there, though '{typo}' exists: a typo?): pass "
                               f"a local diffusers VAE folder, a preset ({', '.join(TEACHERS)}) or a Hub repo id.")
    if preset is None and not Path(source).exists() and source.count("/") != 1:
        raise TeacherLoadError(
            f"Unknown teacher '{source}': pass a preset ({', '.join(TEACHERS)}), a Hub repo id (owner/name) "
            "or a local diffusers VAE folder."
        )
    if preset is not None and Path(preset.repo_id).is_absolute() and not (Path(source).exists() or is_pair(source)):
        raise TeacherLoadError(f"The shipped teacher '{config.name}' is missing at {source}; restore weights/ from "
                               "the repository.")
    if is_pair(source):  # a tiny autoencoder as the teacher: its latents are the space the student learns
        vae = nn.Module.to(diffusers_model(load_student(source, preset.family if preset else None)),
                           DTYPES[config.dtype])
        family = preset.family if preset else family_of_pair(source) or guess_family(dict(vae.config), 0.0)
        return Teacher(vae, config.scaling_factor or 1.0, config.shift_factor or 0.0, name=config.name,
                       family=family).to(device)
    try:
        with quiet_hub():
            cfg = _read_config(source, subfolder, config.revision)
            cls = _vae_class(cfg.get("_class_name", "AutoencoderKL"))
            vae = cls.from_pretrained(
                source, subfolder=subfolder, revision=config.revision, torch_dtype=DTYPES[config.dtype],
                local_files_only=not Path(source).exists() and hub_unreachable(),
            )
    except TeacherLoadError:
        raise
    except Exception as exc:  # diffusers/huggingface_hub raise many types for "not reachable"
        if Path(source).exists():
            raise TeacherLoadError(f"Could not load the teacher VAE from '{source}': {exc}") from None
        raise TeacherLoadError(not_on_hub_message(source, "the teacher VAE", subfolder, "--teacher")) from None
    if config.dtype == "fp16" and preset is not None and not preset.fp16_safe:
        warnings.warn(f"Teacher '{config.name}' is not known to be fp16-safe (its activations can overflow to NaN); "
                      "use --teacher.dtype bf16 or fp32 if losses turn NaN.", stacklevel=2)
    scaling, shift = resolve_factors(config, preset, cfg)
    family = preset.family if preset else guess_family(cfg, shift)
    return Teacher(vae, scaling, shift, name=config.name, sample=config.sample, family=family).to(device)


def resolve_factors(config: TeacherConfig, preset: TeacherPreset | None, vae_config: dict) -> tuple[float, float]:
    """CLI/recipe override > preset > the VAE's own config (> 1/0 for an AutoencoderTiny)."""
    is_tiny = vae_config.get("_class_name") == "AutoencoderTiny"
    if preset is not None and preset.scaling_factor is not None:
        scaling, shift = preset.scaling_factor, preset.shift_factor
    elif is_tiny:
        scaling, shift = 1.0, 0.0
    else:
        scaling = vae_config.get("scaling_factor", 0.18215)
        shift = vae_config.get("shift_factor") or 0.0
    if config.scaling_factor is not None:
        scaling = config.scaling_factor
    if config.shift_factor is not None:
        shift = config.shift_factor
    return float(scaling), float(shift)


def guess_family(vae_config: dict, shift_factor: float) -> str:
    """Export file names for a VAE outside the presets: FLUX.1 and SD3 differ by their shift."""
    if vae_config.get("latent_channels", 4) != 16:
        return "sd"
    return "flux" if abs(shift_factor - TEACHERS["flux"].shift_factor) < 1e-3 else "sd3"


def build_teacher(name: str, device: str | torch.device = "cpu", dtype: str = "fp32", seed: int = 0) -> Teacher:
    """A preset's architecture with random weights: for speed comparisons, never for quality."""
    preset = TEACHERS.get(name)
    if preset is None or not preset.arch:
        raise TeacherLoadError(f"No weights-free architecture for '{name}'; known: "
                               f"{', '.join(n for n, p in TEACHERS.items() if p.arch)}.")
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**preset.arch)
    nn.Module.to(vae, DTYPES[dtype])  # diffusers' own .to() warns about fp32 modules on every cast
    return Teacher(vae, preset.scaling_factor, preset.shift_factor, name=f"{name} (random weights)",
                   family=preset.family).to(device)
