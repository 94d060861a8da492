"""What a run may do with its output folder, and what a resume may change in the recipe it continues.

`plan_run` decides before any work: the folder must be writable; a folder that holds a
run is continued only with --resume (a finished run is never started over); a damaged
newest checkpoint falls back to the previous one with a warning; and every recipe field
that differs from the checkpoint's recipe follows its rule in RESUME_POLICY. What changed
is printed in one line and kept as the run's resume history (run.json, tinyae.json).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from diffusers.training_utils import EMAModel

from tinyae.config import Recipe, StudentConfig, dotted_fields
from tinyae.errors import CheckpointError, ConfigError
from tinyae.models.student import CONFIG_NAME, Student
from tinyae.models.variants import resolve_arch
from tinyae.models.video_student import VideoArch, VideoStudent
from tinyae.training.checkpoints import (
    CHECKPOINT_RE,
    checkpoint_damage,
    list_checkpoints,
    read_record,
    refuse_unsafe,
    remove_interrupted_saves,
)
from tinyae.training.launch import optimizer_flags
from tinyae.training.step import DistillParts
from tinyae.utils.atomic import check_writable

logger = logging.getLogger(__name__)

MAY_CHANGE = "may change"  # takes effect from the checkpoint's step on
MAY_GROW = "may grow"  # at least the checkpoint's value
MUST_EQUAL = "must equal"  # a different value would train another model: refused
OPTIMIZER = "applies to the optimizer"  # set on the restored optimizers, whose saved values would otherwise win
EMA = "applies to the EMA"  # set on the restored EMA, which saves its decay
NOT_COMPARED = "not compared"  # says how to run, not what to train
RESUME_RULES = (MAY_CHANGE, MAY_GROW, MUST_EQUAL, OPTIMIZER, EMA, NOT_COMPARED)

# A field's rule is its own entry, else its section's.
RESUME_POLICY: dict[str, str] = {
    "name": MAY_CHANGE,
    "teacher": MUST_EQUAL,  # another VAE or other factors: another target
    "teacher.dtype": MAY_CHANGE,  # the same frozen teacher at another precision
    "student": MUST_EQUAL,  # the checkpoint's weights have its shape (compared as the resolved architecture)
    "student.gradient_checkpointing": MAY_CHANGE,  # memory for compute, same numbers
    "student.init": MAY_CHANGE,  # where step 0 started; the checkpoint's weights replace it
    "student.mid_grey_init": MAY_CHANGE,  # likewise
    "student.init_ridge": MAY_CHANGE,  # likewise: the warm start's latent-space fit
    "data": MAY_CHANGE,  # moved folders, caches, workers, crop sizes of the next steps
    "data.holdout": MUST_EQUAL,  # another split would evaluate on trained images
    "loss": MAY_CHANGE,  # the terms and weights of the next steps
    "loss.disc": MUST_EQUAL,  # the discriminator's weights have its shape
    "loss.disc_width": MUST_EQUAL,
    "loss.disc_frames": MUST_EQUAL,  # a frame group's channels are the video discriminator's input
    "loss.replay": MUST_EQUAL,  # the checkpoint holds the replay buffer, of that size
    "optim": OPTIMIZER,
    "optim.grad_clip": MAY_CHANGE,  # read at every step
    "optim.amsgrad": MUST_EQUAL,  # the saved optimizer state has (or lacks) its running maxima
    "train": MAY_CHANGE,  # batch size, precision, logging, checkpoints, output: from the checkpoint on
    "train.steps": MAY_GROW,  # a resume cannot undo steps
    "train.seed": MUST_EQUAL,  # every step's crops are a function of it
    "train.parts": MUST_EQUAL,  # the saved optimizer holds the state of the trained half's parameters only
    "train.ema_decay": EMA,
    "train.resume": NOT_COMPARED,
    "train.output_dir": NOT_COMPARED,  # a run folder may be moved between resumes
}
NOTES = {OPTIMIZER: " (applied to the optimizer)", EMA: " (applied to the EMA)"}
FINISHED = ("student", "metrics.json", "run.json")  # what a finished run leaves


def rule_for(name: str) -> str:
    """The resume rule of a dotted recipe field."""
    return RESUME_POLICY.get(name) or RESUME_POLICY[name.split(".")[0]]


@dataclass
class RunPlan:
    """Where a run starts: a checkpoint to resume (None: step 0), what differs from its recipe, the history."""

    checkpoint: Path | None = None
    step: int = 0
    changes: dict[str, list] = field(default_factory=dict)  # field -> [checkpoint's value, this run's]
    resumes: list[dict] = field(default_factory=list)  # every resume of the run so far, this one last
    processes: int | None = None  # how many processes wrote the checkpoint (None: not recorded)
    threads: int | None = None  # the CPU threads the run started with, which `threads: auto` keeps

    def record(self, recipe: Recipe, threads: int | None = None) -> dict:
        """What a checkpoint keeps besides the state: the recipe it was trained with, the CPU threads the run
        started with and the resume history."""
        return {"recipe": recipe.to_dict(), "threads": self.threads or threads, "resumes": self.resumes}

    def summary(self, processes: int | None = None) -> str:
        """What a resume prints: one line, and a second sentence when the number of processes changed."""
        if not self.changes:
            line = f"Resumed from {self.checkpoint} at step {self.step}. Same recipe as the checkpoint."
        else:
            changes = ", ".join(f"{name} {old!r} -> {new!r}{NOTES.get(rule_for(name), '')}"
                                for name, (old, new) in self.changes.items())
            line = f"Resumed from {self.checkpoint} at step {self.step}. Changed since the checkpoint: {changes}."
        if processes is not None and self.processes is not None and processes != self.processes:
            fresh = ("; the processes it had no state for start their replay buffers and generators afresh"
                     if processes > self.processes else "")
            line += (f" It was written by {self.processes} process{'es' if self.processes > 1 else ''} and this "
                     f"run has {processes}: weights, optimizers, EMA and step continue, but the data are split "
                     f"otherwise{fresh}, so the rest of the run is not bit-identical to an uninterrupted one "
                     "(exact resumes need the same number of processes).")
        return line


def plan_run(recipe: Recipe, main_process: bool = True) -> RunPlan:
    """Check the output folder and the checkpoint to resume against the recipe, before any work."""
    out = Path(recipe.train.output_dir)
    check_writable(out, "--output")
    if main_process:
        remove_interrupted_saves(out)
    checkpoint = choose_checkpoint(out, recipe.train.resume)
    if checkpoint is None:
        return RunPlan()
    refuse_unsafe(checkpoint)  # before any work; loading it again checks again
    saved = read_record(checkpoint)
    if "recipe" not in saved and checkpoint.parent == out / "checkpoints" and (out / "recipe.json").is_file():
        saved["recipe"] = json.loads((out / "recipe.json").read_text())  # a checkpoint from before tinyae.json
    match = CHECKPOINT_RE.match(checkpoint.name)
    step = int(saved.get("step", match.group(1) if match else 0))
    if recipe.train.steps < step:
        raise ConfigError(f"train.steps {recipe.train.steps} is below the step of '{checkpoint}' ({step}): a resume "
                          f"cannot undo steps; pass --train.steps {step} or more, or resume from an earlier "
                          "checkpoint with --resume PATH.")
    changes = compare_recipes(saved["recipe"], recipe, checkpoint) if "recipe" in saved else {}
    resumes = [*saved.get("resumes", []), {"checkpoint": str(checkpoint), "step": step, "changes": changes}]
    return RunPlan(checkpoint, step, changes, resumes, saved.get("processes"), saved.get("threads"))


def choose_checkpoint(out: Path, resume: str | None) -> Path | None:
    """The checkpoint `--resume` names (None: a new run), refusing to start a new run over an old one."""
    checkpoints = list_checkpoints(out)
    finished = [name for name in FINISHED if (out / name).exists()]
    if resume is None:
        if finished and not checkpoints:
            raise ConfigError(f"'{out}' already holds a finished run ({', '.join(finished)}) and no checkpoint to "
                              "continue from: choose another --output, or delete the folder to start over.")
        if checkpoints or finished:
            raise ConfigError(f"'{out}' already holds checkpoints of a run: pass --resume latest to continue it, or "
                              "choose another --output.")
        if (out / "recipe.json").exists():
            raise ConfigError(f"'{out}' already holds a run that stopped before its first checkpoint (recipe.json): "
                              "pass --resume latest to start it again, or choose another --output.")
        return None
    if resume == "latest":
        if not checkpoints and finished:
            raise ConfigError(f"'{out}' holds a finished run ({', '.join(finished)}) but no checkpoint to resume "
                              "from: choose another --output, or delete the folder to start over.")
        if not checkpoints:
            logger.warning("No checkpoint in %s to resume from: starting from step 0.", out)
            return None
        return newest_intact(checkpoints)
    path = Path(resume)
    if not path.is_dir():
        raise ConfigError(f"Checkpoint '{resume}' does not exist; pass --resume latest or a checkpoint-N folder.")
    damage = checkpoint_damage(path)
    if damage:
        earlier = [p for p in list_checkpoints(path.parent.parent) if p != path and checkpoint_damage(p) is None]
        advice = (f"resume from the previous one with --resume {earlier[-1]}, or pass --resume latest to fall back "
                  "to it automatically" if earlier else "no other checkpoint of that run is intact")
        raise CheckpointError(f"Cannot resume from '{path}': {damage}; {advice}.")
    return path


def newest_intact(checkpoints: list[Path]) -> Path:
    """The newest checkpoint whose files read whole, warning about each damaged one skipped."""
    for i in range(len(checkpoints) - 1, -1, -1):
        damage = checkpoint_damage(checkpoints[i])
        if damage is None:
            return checkpoints[i]
        if i == 0:
            raise CheckpointError(f"Cannot resume: {damage}, and no earlier checkpoint in '{checkpoints[i].parent}' "
                                  "is intact; start a new run with another --output.")
        warnings.warn(f"{damage}: resuming from {checkpoints[i - 1]} instead ({checkpoints[i].name} is written "
                      "again when the run gets there).", stacklevel=3)
    raise CheckpointError("No checkpoint to resume from.")


def compare_recipes(saved: dict, recipe: Recipe, checkpoint: Path) -> dict[str, list]:
    """{field: [checkpoint's value, recipe's]} for the fields a resume may change; refuses the others."""
    old, new = dotted_fields(saved), dotted_fields(recipe.to_dict())
    differ = [name for name in new if name in old and old[name] != new[name] and rule_for(name) != NOT_COMPARED]
    student_differs = _resolved(saved.get("student", {}), checkpoint) != _resolved(recipe.to_dict()["student"],
                                                                                   checkpoint)
    refused = [name for name in differ if rule_for(name) == MUST_EQUAL
               and (student_differs or not name.startswith("student."))]
    if refused:
        listed = ", ".join(f"{name} ({old[name]!r} -> {new[name]!r})" for name in refused)
        flags = " ".join(f"--{name} {json.dumps(old[name])}" for name in refused)  # JSON is YAML
        raise ConfigError(f"Cannot resume '{checkpoint}' with {listed}: a resume must keep what shapes the model, "
                          "its target, its data order and its held-out images; to continue the run, pass the "
                          f"checkpoint's values ({flags}), or start a new run with another --output.")
    return {name: [old[name], new[name]] for name in differ}


def _resolved(student: dict, checkpoint: Path):
    """A recipe's student section as the architecture it builds for the checkpoint's latents (equal spellings match)."""
    arch = checkpoint_arch(checkpoint)
    if isinstance(arch, VideoArch):  # a TAEHV layout is named, not resolved: the section is compared as written
        return student
    try:
        return resolve_arch(StudentConfig(**student), arch.latent_channels, arch.downscale)
    except (ConfigError, TypeError):
        return student


def checkpoint_arch(checkpoint: Path):
    """The architecture of the checkpoint's EMA student (student_ema/config.json): an image or a video layout."""
    config = json.loads((Path(checkpoint) / "student_ema" / CONFIG_NAME).read_text())
    if config.get("_class_name") == VideoStudent.__name__:
        init = VideoStudent.extract_init_dict(config)[0]
        return VideoArch(**{name: init[name] for name in VideoArch.__dataclass_fields__ if name in init})
    return Student.arch_from_diffusers(config)


def check_student(plan: RunPlan, student) -> None:
    """Refuse, before loading the state, a student of another shape than the checkpoint's (torch would fail inside)."""
    theirs = checkpoint_arch(plan.checkpoint)
    if student.arch != theirs:
        ours, saved = student.arch.to_dict(), theirs.to_dict()
        differ = ", ".join(f"{k} {saved[k]} -> {ours[k]}" for k in ours if ours[k] != saved[k])
        raise ConfigError(f"The recipe builds a student of another architecture than '{plan.checkpoint}' ({differ}): "
                          "resume with the checkpoint's student settings, or start a new run with another --output.")


def apply_recipe(recipe: Recipe, parts: DistillParts, ema: EMAModel) -> None:
    """Set the recipe's optimizer and EMA settings on the restored state, which saved its own."""
    optim = recipe.optim
    flags = optimizer_flags(parts.accelerator.device)  # this machine's kernels, not the saving machine's
    for group in parts.opt.param_groups:
        group.update(betas=tuple(optim.betas), weight_decay=optim.weight_decay, initial_lr=optim.lr, **flags)
    sched = parts.sched
    sched.base_lrs = [optim.lr] * len(sched.base_lrs)  # the warm-up scales these from the restored step on
    lrs = [base * factor(sched.last_epoch) for base, factor in zip(sched.base_lrs, sched.lr_lambdas)]
    for group, lr in zip(parts.opt.param_groups, lrs):
        group["lr"] = lr
    sched._last_lr = lrs
    for group in parts.adversary.opt.param_groups:
        group.update(lr=optim.disc_lr, betas=tuple(optim.betas), **flags)
    ema.decay = recipe.train.ema_decay
