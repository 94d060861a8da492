"""Checkpoints of a run: written whole or not at all, checked before they are resumed.

A checkpoint is accelerate's state (models, optimizers, RNGs), tinyae's own shared state (EMA,
step counter, schedule) in `training_state.safetensors`,
the EMA student as an AutoencoderTiny folder (`student_ema/`), so any checkpoint exports
without the training code, and `tinyae.json`: its step, the recipe it was trained with, the
number of processes and CPU threads it ran with, and the run's resume history. What each
process owns (the adversary's replay buffer and random generator) is saved by that process
into `rank_state_N.safetensors`; a resume with more processes than the checkpoint's starts the
extra ones' afresh (exact resumes need the same number of processes).

Checkpoints get shared, so resuming one never runs code: tinyae's
state is tensors plus JSON, and every torch archive must load with `weights_only=True`.
It is written into `.tmp-checkpoint-N` and renamed; a save that fails (a full disk)
removes that folder and says which checkpoint is the last good one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils.other import load as accelerate_load
from safetensors import safe_open
from safetensors.torch import save_file

from tinyae.errors import CheckpointError
from tinyae.models.student import CONFIG_NAME, Student
from tinyae.utils.atomic import reporting_write_errors, share

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
RECORD_NAME = "tinyae.json"  # the checkpoint's step, recipe and resume history
TORCH_ARCHIVES = (".bin", ".pkl", ".pt", ".pth")  # torch.save's zip files (optimizers, RNG states)
STATE_NAME = "training_state.safetensors"  # tinyae's own state: tensors, with the rest as JSON in the metadata
RANK_STATE = "rank_state_{}.safetensors"  # what process N owns, in STATE_NAME's format
PICKLED_STATE = "custom_checkpoint_*.pkl"  # where tinyae kept that state before: full pickles, never loaded


class TrainState:
    """The step counter, saved and restored with accelerate's checkpoint."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def save_training_state(objects: dict, path: Path) -> None:
    """The state dicts of `objects` (name -> object) as one safetensors file: tensors, and JSON for the rest."""
    tensors: dict[str, torch.Tensor] = {}

    def split(value, key: str):
        if isinstance(value, torch.Tensor):
            tensors[key] = value.detach().cpu().contiguous()
            return {"__tensor__": key}
        if isinstance(value, dict):
            return {str(k): split(v, f"{key}.{k}") for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [split(v, f"{key}.{i}") for i, v in enumerate(value)]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"{key}: a {type(value).__name__} has no safe checkpoint format")

    tree = {name: split(obj.state_dict(), name) for name, obj in objects.items()}
    save_file(tensors, str(path), metadata={"tree": json.dumps(tree)})


def read_training_state(checkpoint: Path, name: str = STATE_NAME) -> dict:
    """tinyae's own state of a checkpoint (the shared file, or `name`) as {name: state dict}; reading it runs no
    code."""
    with safe_open(str(Path(checkpoint) / name), framework="pt") as f:
        tree = json.loads(f.metadata()["tree"])
        tensors = {key: f.get_tensor(key) for key in f.keys()}

    def join(value):
        if isinstance(value, dict):
            return tensors[value["__tensor__"]] if set(value) == {"__tensor__"} else {k: join(v) for k, v in
                                                                                   value.items()}
        return [join(v) for v in value] if isinstance(value, list) else value

    return {name: join(state) for name, state in tree.items()}


def refuse_unsafe(checkpoint: Path) -> None:
    """Refuse a checkpoint that needs more than tensors to load: resuming a downloaded run must not run its code."""
    checkpoint = Path(checkpoint)
    pickled = sorted(p.name for p in checkpoint.glob(PICKLED_STATE))
    if pickled or not (checkpoint / STATE_NAME).is_file():
        found = f"keeps its training state in pickles ({', '.join(pickled)})" if pickled else (
            f"has no {STATE_NAME}")
        raise CheckpointError(
            f"Cannot resume from '{checkpoint}': it {found}, an older tinyae's format whose loading can run code; "
            f"start a new run from its weights with --student.init {checkpoint / 'student_ema'}.")
    for path in sorted(p for p in checkpoint.iterdir() if p.suffix in TORCH_ARCHIVES):
        try:
            accelerate_load(path, map_location="cpu", weights_only=True)  # as accelerate's load_state reads it
        except Exception as exc:  # torch's UnpicklingError names the global it refused
            needs = re.search(r"GLOBAL (\S+)", str(exc))
            raise CheckpointError(
                f"Cannot resume from '{checkpoint}': '{path.name}' needs more than tensors to load "
                f"({needs.group(1) if needs else 'not a weights-only archive'}), and loading it could run code; "
                "resume only checkpoints written by tinyae, or start a new run from its weights with "
                f"--student.init {checkpoint / 'student_ema'}.") from None


def load_checkpoint(accelerator: Accelerator, checkpoint: Path, objects: dict, rank_objects: dict | None = None
                    ) -> bool:
    """Restore accelerate's state, tinyae's shared state (`objects`, name -> object) and this process's own
    (`rank_objects`) from a checkpoint that passed `refuse_unsafe`. Returns False when the checkpoint holds no
    state for this process (it was written by fewer processes): its `rank_objects` keep their fresh state."""
    refuse_unsafe(checkpoint)
    accelerator.load_state(str(checkpoint))
    shared = read_training_state(checkpoint)
    for name, state in shared.items():
        if name in objects:
            objects[name].load_state_dict(state)
    rank_objects = rank_objects or {}
    own = Path(checkpoint) / RANK_STATE.format(accelerator.process_index)
    if own.is_file():
        saved = read_training_state(checkpoint, own.name)
    elif not any(Path(checkpoint).glob(RANK_STATE.format("*"))):
        saved = shared  # written before per-process state: every process takes the main process's
    else:
        return False
    for name, obj in rank_objects.items():
        if name in saved:
            obj.load_state_dict(saved[name])
    return True


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (temporary folders of interrupted saves are ignored)."""
    root = Path(output_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in root.glob("checkpoint-*") if (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def remove_interrupted_saves(output_dir: Path) -> None:
    """Delete the `.tmp-checkpoint-N` folders of saves that were killed; put back a checkpoint caught mid-replace."""
    root = Path(output_dir) / "checkpoints"
    for old in root.glob(".old-checkpoint-*"):
        final = root / old.name.removeprefix(".old-")
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, final)
    for tmp in root.glob(".tmp-checkpoint-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, ema_student: Student, limit: int,
                    record: dict | None = None, objects: dict | None = None, rank_objects: dict | None = None
                    ) -> Path:
    """Save into a temporary folder, then rename: a crash mid-save never replaces a good checkpoint.

    `record` (the recipe and resume history) goes to tinyae.json with the step and the number of processes,
    the state of `objects` (name -> object with a state_dict) to training_state.safetensors, and each
    process's `rank_objects` to its own rank_state_N.safetensors.
    """
    root = Path(output_dir) / "checkpoints"
    final, tmp, old = root / f"checkpoint-{step}", root / f".tmp-checkpoint-{step}", root / f".old-checkpoint-{step}"
    previous = list_checkpoints(output_dir)
    kept = "nothing was replaced and the partial checkpoint was removed; " + (
        f"the last good checkpoint is '{previous[-1]}' (--resume latest continues from it)" if previous
        else "there is no earlier checkpoint")
    with reporting_write_errors(final, kept):
        try:
            if accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            accelerator.wait_for_everyone()
            accelerator.save_state(str(tmp))
            if rank_objects:
                save_training_state(rank_objects, tmp / RANK_STATE.format(accelerator.process_index))
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                save_training_state(objects or {}, tmp / STATE_NAME)
                ema_student.save_pretrained(tmp / "student_ema")
                if record is not None:
                    (tmp / RECORD_NAME).write_text(json.dumps(
                        {"step": step, "processes": accelerator.num_processes, **record}, indent=2) + "\n")
                share(tmp)  # accelerate's safetensors files are private to their writer
                if final.exists():
                    os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
                for stale in list_checkpoints(output_dir)[:-limit] if limit > 0 else []:
                    shutil.rmtree(stale, ignore_errors=True)
        except BaseException:
            if accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
    accelerator.wait_for_everyone()
    return final


def read_record(checkpoint: Path) -> dict:
    """The checkpoint's tinyae.json ({} for checkpoints written before tinyae recorded it)."""
    path = Path(checkpoint) / RECORD_NAME
    return json.loads(path.read_text()) if path.is_file() else {}


def checkpoint_damage(checkpoint: Path) -> str | None:
    """None if every file of the checkpoint reads whole, else a sentence naming the first one that does not.

    safetensors files must be as long as their header says, torch archives must pass the
    zip CRC checks, JSON must parse: what a truncated copy or a torn write breaks.
    """
    checkpoint = Path(checkpoint)
    for required in (checkpoint / "model.safetensors", checkpoint / "student_ema" / CONFIG_NAME):
        if not required.is_file():
            return f"'{required}' is missing"
    for path in sorted(p for p in checkpoint.rglob("*") if p.is_file()):
        problem = _file_damage(path)
        if problem:
            return f"'{path}' is truncated or damaged ({problem})"
    return None


def _file_damage(path: Path) -> str | None:
    size = path.stat().st_size
    try:
        if path.suffix == ".safetensors":
            with open(path, "rb") as f:
                header_size = int.from_bytes(f.read(8), "little")
                if size < 8 + header_size:
                    return f"{size} bytes, shorter than its {header_size}-byte header"
                header = json.loads(f.read(header_size))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
            if size != 8 + header_size + end:
                return f"{size} bytes where its header describes {8 + header_size + end}"
        elif path.suffix in TORCH_ARCHIVES:
            if not zipfile.is_zipfile(path):
                return f"{size} bytes, not a complete torch archive"
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                return f"its entry {bad} fails its CRC check"
        elif path.suffix == ".json":
            json.loads(path.read_text())
    except (OSError, ValueError, zipfile.BadZipFile, KeyError, TypeError) as exc:
        return str(exc)
    return None
