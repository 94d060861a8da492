"""Export a student where people use it, atomically.

Every export is written into a temporary sibling folder and renamed into place
in one step, so an interrupted export never leaves a half-written folder that
a pipeline would load, and an existing folder is never replaced unless asked.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

from tinyae.errors import ExportError


@contextmanager
def atomic_folder(target: str | Path, overwrite: bool = False):
    """Yield a temporary folder that becomes `target` only if the block finishes."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise ExportError(f"'{target}' already exists; pass overwrite=True (--overwrite) or choose another folder.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def export_diffusers(student, directory: str | Path, overwrite: bool = False, dtype: torch.dtype | None = None,
                     extra: Callable[[Path], None] | None = None) -> Path:
    """Write an AutoencoderTiny folder: config.json + diffusion_pytorch_model.safetensors."""
    from diffusers import AutoencoderTiny

    config = {"_class_name": AutoencoderTiny.__name__, "_diffusers_version": _diffusers_version(),
              **student.diffusers_config()}
    state = {k: (v.to(dtype) if dtype else v).detach().cpu().contiguous() for k, v in student.state_dict().items()}
    with atomic_folder(directory, overwrite) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file(state, tmp / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})
        if extra is not None:
            extra(tmp)
    return Path(directory)


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__
