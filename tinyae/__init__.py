"""tinyae: distill tiny TAESD-style autoencoders from the frozen VAEs of diffusion models."""

from tinyae.config import Recipe, load_recipe
from tinyae.errors import ConfigError, DataError, ExportError, TeacherLoadError, TinyaeError
from tinyae.student import Student
from tinyae.teacher import TEACHERS, Teacher, build_teacher, load_teacher, register_teacher

__version__ = "0.1.0"

__all__ = [
    "Recipe", "load_recipe", "Student", "Teacher", "TEACHERS", "build_teacher", "load_teacher", "register_teacher",
    "TinyaeError", "ConfigError", "DataError", "ExportError", "TeacherLoadError",
]
