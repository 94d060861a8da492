"""tinyae: distill tiny TAESD-style autoencoders from the frozen VAEs of diffusion models."""

from tinyae.config import Recipe, load_recipe
from tinyae.errors import ConfigError, DataError, ExportError, TeacherLoadError, TinyaeError
from tinyae.export import export_all, export_diffusers, export_taesd
from tinyae.formats import load_student
from tinyae.preview import PreviewCallback, load_preview_decoder
from tinyae.student import Student
from tinyae.teacher import TEACHERS, Teacher, build_teacher, load_teacher, register_teacher

__version__ = "0.1.0"

__all__ = [
    "Recipe", "load_recipe", "Student", "Teacher", "TEACHERS", "build_teacher", "load_teacher", "register_teacher",
    "load_student", "load_preview_decoder", "PreviewCallback", "export_all", "export_diffusers", "export_taesd",
    "TinyaeError", "ConfigError", "DataError", "ExportError", "TeacherLoadError",
]


def __getattr__(name: str):
    if name == "distill":  # keeps `import tinyae` free of accelerate/tensorboard start-up cost
        from tinyae.train import distill

        return distill
    raise AttributeError(f"module 'tinyae' has no attribute {name!r}")
