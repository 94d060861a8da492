"""tinyae: distill tiny TAESD-style autoencoders from the frozen VAEs of diffusion models.

The public API; everything else lives in one subpackage per concern: models, data,
training, shipping, evaluation (and utils, cli).
"""

from tinyae.config import Recipe, load_recipe
from tinyae.errors import ConfigError, DataError, ExportError, TeacherLoadError, TinyaeError
from tinyae.models.formats import load_student
from tinyae.models.latent_space import LatentSpace, PatchNormSpace, PerChannelSpace, ScalarSpace
from tinyae.models.presets import TEACHERS, TeacherPreset, register_teacher
from tinyae.models.student import Student
from tinyae.models.teacher import Teacher, build_teacher, load_teacher
from tinyae.models.tiny_autoencoder import TinyAutoencoder
from tinyae.shipping.export import export_all, export_diffusers, export_taesd
from tinyae.shipping.preview import PreviewCallback, load_preview_decoder
from tinyae.training.loop import distill

__version__ = "0.1.0"

__all__ = [
    "Recipe", "load_recipe", "Student", "Teacher", "TEACHERS", "TeacherPreset", "build_teacher", "load_teacher",
    "register_teacher", "TinyAutoencoder", "LatentSpace", "ScalarSpace", "PerChannelSpace", "PatchNormSpace",
    "load_student", "load_preview_decoder", "PreviewCallback", "export_all", "export_diffusers",
    "export_taesd", "distill", "TinyaeError", "ConfigError", "DataError", "ExportError", "TeacherLoadError",
]
