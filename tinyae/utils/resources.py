"""Files that ship inside the package: the recipes and the small offline teacher.

In the repository they are the top-level `recipes/` and `weights/` folders; the wheel
installs them as the packages `tinyae.recipes` and `tinyae.weights` (pyproject.toml maps
them), so an installed tinyae finds them wherever it runs from.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def recipes_dir() -> Path:
    return Path(str(files("tinyae.recipes")))


def weights_dir() -> Path:
    return Path(str(files("tinyae.weights")))
