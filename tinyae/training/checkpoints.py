"""Checkpoints of a run: written whole or not at all, found again by `--resume latest`.

A checkpoint is accelerate's state (models, optimizers, RNGs and the registered
objects: EMA, step counter, schedule) plus the EMA student as an AutoencoderTiny
folder (`student_ema/`), so any checkpoint exports without the training code.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from accelerate import Accelerator

from tinyae.errors import ConfigError
from tinyae.models.student import Student

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class TrainState:
    """The step counter, saved and restored with accelerate's checkpoint."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (temporary folders of interrupted saves are ignored)."""
    root = Path(output_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in root.glob("checkpoint-*") if (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def find_resume_checkpoint(output_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint `--resume` names (None: a new run), refusing to start a new run over an old one."""
    if resume is None:
        if list_checkpoints(output_dir):
            raise ConfigError(
                f"'{output_dir}' already holds checkpoints of a run: pass --resume latest to continue it, "
                "or choose another --output."
            )
        return None
    if resume == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            logger.warning("No checkpoint in %s to resume from: starting from step 0.", output_dir)
            return None
        return checkpoints[-1]
    path = Path(resume)
    if not path.is_dir():
        raise ConfigError(f"Checkpoint '{resume}' does not exist; pass --resume latest or a checkpoint-N folder.")
    return path


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, ema_student: Student, limit: int) -> Path:
    """Save into a temporary folder, then rename: a crash mid-save never replaces a good checkpoint."""
    root = Path(output_dir) / "checkpoints"
    final, tmp = root / f"checkpoint-{step}", root / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        ema_student.save_pretrained(tmp / "student_ema")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-limit] if limit > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
