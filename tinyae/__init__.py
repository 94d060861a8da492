"""tinyae: distill tiny TAESD-style autoencoders from the frozen VAEs of diffusion models.

The public API; everything else lives in one subpackage per concern: models, data,
training, shipping, evaluation (and utils, cli). Names are imported on first use, so
`import tinyae` (and `tinyae --help`) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "Recipe": "tinyae.config", "load_recipe": "tinyae.config",
    "ConfigError": "tinyae.errors", "DataError": "tinyae.errors", "ExportError": "tinyae.errors",
    "TeacherLoadError": "tinyae.errors", "TinyaeError": "tinyae.errors",
    "load_student": "tinyae.models.formats",
    "LatentSpace": "tinyae.models.latent_space", "PatchNormSpace": "tinyae.models.latent_space",
    "PerChannelSpace": "tinyae.models.latent_space", "ScalarSpace": "tinyae.models.latent_space",
    "TEACHERS": "tinyae.models.presets", "TeacherPreset": "tinyae.models.presets",
    "register_teacher": "tinyae.models.presets",
    "Student": "tinyae.models.student",
    "Teacher": "tinyae.models.teacher", "build_teacher": "tinyae.models.teacher", "load_teacher": "tinyae.models.teacher",
    "TinyAutoencoder": "tinyae.models.tiny_autoencoder",
    "export_all": "tinyae.shipping.export", "export_diffusers": "tinyae.shipping.export",
    "export_taesd": "tinyae.shipping.export",
    "PreviewCallback": "tinyae.shipping.preview", "load_preview_decoder": "tinyae.shipping.preview",
    "distill": "tinyae.training.loop",
}
__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # what static tools and IDEs see
    from tinyae.config import Recipe, load_recipe  # noqa: F401
    from tinyae.errors import ConfigError, DataError, ExportError, TeacherLoadError, TinyaeError  # noqa: F401
    from tinyae.models.formats import load_student  # noqa: F401
    from tinyae.models.latent_space import LatentSpace, PatchNormSpace, PerChannelSpace, ScalarSpace  # noqa: F401
    from tinyae.models.presets import TEACHERS, TeacherPreset, register_teacher  # noqa: F401
    from tinyae.models.student import Student  # noqa: F401
    from tinyae.models.teacher import Teacher, build_teacher, load_teacher  # noqa: F401
    from tinyae.models.tiny_autoencoder import TinyAutoencoder  # noqa: F401
    from tinyae.shipping.export import export_all, export_diffusers, export_taesd  # noqa: F401
    from tinyae.shipping.preview import PreviewCallback, load_preview_decoder  # noqa: F401
    from tinyae.training.loop import distill  # noqa: F401


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tinyae' has no attribute '{name}'")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
