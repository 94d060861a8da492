"""Distillation under accelerate: one loop, read top to bottom.

Each step: the teacher encodes a batch (or the cache supplies its latents); the
student encoder matches those latents; the student decoder reconstructs the
image from them, judged by pixel + LPIPS + a latent-conditioned discriminator;
the discriminator then takes its own step. An EMA copy of the student is what
samples, checkpoints' `student_ema/` and the final export use.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.training_utils import EMAModel
from torch import nn
from tqdm.auto import tqdm

from tinyae.config import Recipe
from tinyae.data import TrainSource, load_eval_images, make_train_loader, make_train_source, to_pil
from tinyae.errors import ConfigError
from tinyae.export import export_diffusers
from tinyae.losses import Discriminator, DistillLoss, discriminator_loss
from tinyae.student import Student
from tinyae.teacher import TEACHERS, Teacher, load_teacher

logger = logging.getLogger("tinyae")

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class TrainState:
    """The step counter, saved and restored with accelerate's checkpoint."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


class StudentStep(nn.Module):
    """One forward for both halves, so DDP sees (and syncs) encoder and decoder together."""

    def __init__(self, student: Student):
        super().__init__()
        self.student = student

    def forward(self, images: torch.Tensor, teacher_latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.student.encode(images), self.student.decode(teacher_latents)


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (temporary folders of interrupted saves are ignored)."""
    root = output_dir / "checkpoints"
    found = [(int(m.group(1)), p) for p in root.glob("checkpoint-*") if (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def find_resume_checkpoint(output_dir: Path, resume: str | None) -> Path | None:
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


def phase_plan(recipe: Recipe) -> list[tuple[int, int, int]]:
    """[(first_step, end_step, resolution)]: long training at small crops, then a short fine-tune."""
    steps, final = recipe.train.steps, recipe.data.final_steps
    if final and recipe.data.final_resolution:
        return [(0, steps - final, recipe.data.resolution), (steps - final, steps, recipe.data.final_resolution)]
    return [(0, steps, recipe.data.resolution)]


def batches(recipe: Recipe, source: TrainSource, start_step: int, rank: int, world_size: int):
    """Yield (step, micro-batch) from `start_step` on, switching crop size at phase boundaries."""
    accum = recipe.train.grad_accum
    for first, end, resolution in phase_plan(recipe):
        if end <= start_step:
            continue
        begin = max(first, start_step)
        loader = make_train_loader(
            source, resolution, recipe.train.batch_size, recipe.train.seed, start_step=begin * accum,
            num_steps=(end - begin) * accum, rank=rank, world_size=world_size,
            num_workers=recipe.data.num_workers, max_zoom_out=recipe.data.max_zoom_out, hflip=recipe.data.hflip,
            pin_memory=torch.cuda.is_available(),
        )
        for i, batch in enumerate(loader):
            yield begin + i // accum, batch


@torch.no_grad()
def sample_grid(student: Student, teacher: Teacher, images: torch.Tensor) -> torch.Tensor:
    """Rows of input | teacher round trip | student decoder on teacher latents | student round trip."""
    latents = teacher.encode(images)
    device = next(student.parameters()).device
    columns = [images.cpu(), teacher.decode(latents).cpu(), student.decode(latents.to(device)).float().cpu(),
               student.decode(student.encode(images.to(device))).float().cpu()]
    rows = torch.stack(columns, dim=1).clamp(-1, 1)  # (N, 4, 3, H, W)
    n, k, c, h, w = rows.shape
    return rows.permute(2, 0, 3, 1, 4).reshape(c, n * h, k * w)


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, ema_student: Student, limit: int) -> Path:
    """Save into a temporary folder, then rename: a crash mid-save never replaces a good checkpoint."""
    root = output_dir / "checkpoints"
    final, tmp = root / f"checkpoint-{step}", root / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        export_diffusers(ema_student, tmp / "student_ema")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-limit] if limit > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def build_student(recipe: Recipe, teacher: Teacher) -> Student:
    config = recipe.student
    if config.latent_channels is None:
        config = dataclasses.replace(config, latent_channels=teacher.latent_channels)
    if config.latent_channels != teacher.latent_channels:
        raise ConfigError(f"student.latent_channels={config.latent_channels} but the teacher has "
                          f"{teacher.latent_channels}; drop the override or pick the matching teacher.")
    if config.init:
        from tinyae.formats import load_student

        student = load_student(config.init)
        if student.latent_channels != teacher.latent_channels:
            raise ConfigError(f"student.init '{config.init}' has {student.latent_channels} latent channels, the "
                              f"teacher {teacher.latent_channels}.")
        student.set_gradient_checkpointing(config.gradient_checkpointing)
        return student
    return Student(config)


def distill(recipe: Recipe) -> Path:
    """Train a student for `recipe`; returns the output folder (student/, metrics.json, samples/, logs/)."""
    cfg, out = recipe.train, Path(recipe.train.output_dir)
    accelerator = Accelerator(
        # Without GPUs, `accelerate launch --num_processes N` must be told to use gloo on the CPU, or each
        # process would silently train alone.
        cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        log_with=cfg.log_with,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    resume_from = find_resume_checkpoint(out, cfg.resume)  # fail before any work
    set_seed(cfg.seed)

    teacher = load_teacher(recipe.teacher, device=accelerator.device)
    source = make_train_source(recipe, teacher, out)  # also checks a teacher cache against this teacher
    heldout, n_bad = source.heldout, source.n_bad
    if recipe.teacher.estimate_factors and recipe.teacher.scaling_factor is None:
        from tinyae.diagnose import estimate_factors

        # The user's explicit --teacher.scaling_factor wins; otherwise 1/std and mean of the raw latents.
        est = estimate_factors(teacher, source.preview_images(64, recipe.data.resolution))
        teacher.scaling_factor, teacher.shift_factor = est.scaling_factor, est.shift_factor
        logger.info("Estimated scaling_factor %.5f %s, shift_factor %.5f %s (for pipelines that ignore the shift: "
                    "scaling_factor %.5f).", est.scaling_factor, est.scaling_ci, est.shift_factor, est.shift_ci,
                    est.scaling_factor_without_shift)
    logger.info("Teacher %s: %d latent channels, scaling %.5f, shift %.5f. Data: %s.", teacher.name,
                teacher.latent_channels, teacher.scaling_factor, teacher.shift_factor, source.describe())

    student = build_student(recipe, teacher)
    ema_student = Student(student.config).to(accelerator.device).requires_grad_(False)
    ema = EMAModel(student.parameters(), decay=cfg.ema_decay, use_ema_warmup=True)
    disc = Discriminator(student.latent_channels, recipe.loss.disc_width)
    loss_fn = DistillLoss(recipe.loss)
    if cfg.channels_last:
        student, disc = student.to(memory_format=torch.channels_last), disc.to(memory_format=torch.channels_last)
    step_model = StudentStep(torch.compile(student) if cfg.compile else student)
    opt = torch.optim.Adam(student.parameters(), lr=recipe.optim.lr, betas=tuple(recipe.optim.betas),
                           weight_decay=recipe.optim.weight_decay)
    d_opt = torch.optim.Adam(disc.parameters(), lr=recipe.optim.disc_lr, betas=tuple(recipe.optim.betas))
    warmup = max(recipe.optim.warmup_steps, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    step_model, disc, opt, d_opt, sched = accelerator.prepare(step_model, disc, opt, d_opt, sched)
    raw_disc = accelerator.unwrap_model(disc)
    state = TrainState()
    accelerator.register_for_checkpointing(ema, state)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        logger.info("Resumed from %s at step %d.", resume_from, state.step)
    ema.to(accelerator.device)

    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2))
    accelerator.init_trackers("tinyae", config=_flat(recipe.to_dict()))
    sample_size = recipe.data.final_resolution or recipe.data.resolution
    sample_images = load_eval_images(heldout[: cfg.sample_images], sample_size) if heldout else None

    progress = tqdm(total=cfg.steps, initial=state.step, disable=not accelerator.is_local_main_process,
                    desc="distill")
    running: dict[str, float] = {}
    for step, batch in batches(recipe, source, state.step, accelerator.process_index, accelerator.num_processes):
        images = batch["images"].to(accelerator.device)
        latents = batch["latents"].to(accelerator.device) if "latents" in batch else teacher.encode(images)
        if recipe.loss.target == "teacher":
            target = batch["targets"].to(accelerator.device) if "targets" in batch else teacher.decode(latents)
        else:
            target = images
        use_adv = recipe.loss.adv_weight > 0 and step >= recipe.loss.adv_start
        if cfg.channels_last:
            images, latents = images.contiguous(memory_format=torch.channels_last), latents.contiguous(
                memory_format=torch.channels_last)

        with accelerator.accumulate(step_model, disc):
            # Student: encoder matches the teacher's latents, decoder reconstructs from them.
            student_latents, recon = step_model(images, latents)
            raw_disc.requires_grad_(False)  # the generator step must not train the discriminator
            fake_logits = raw_disc(recon, latents) if use_adv else None
            terms = loss_fn.encoder_terms(student_latents, latents) | loss_fn.decoder_terms(recon, target, fake_logits)
            loss = loss_fn.weighted_total(terms)
            accelerator.backward(loss)
            if accelerator.sync_gradients and recipe.optim.grad_clip > 0:
                accelerator.clip_grad_norm_(step_model.parameters(), recipe.optim.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)

            # Discriminator: real images vs the student's reconstructions, both with their latent.
            if use_adv:
                raw_disc.requires_grad_(True)
                with accelerator.autocast():
                    d_loss = discriminator_loss(disc(images, latents), disc(recon.detach(), latents))
                accelerator.backward(d_loss)
                d_opt.step()
                d_opt.zero_grad(set_to_none=True)
                terms["disc"] = d_loss
        for name, value in terms.items():
            running[name] = running.get(name, 0.0) + value.detach().float().item() / cfg.grad_accum
        if not accelerator.sync_gradients:
            continue

        # One optimizer step is done.
        ema.step(student.parameters())
        state.step = step + 1
        progress.update(1)
        progress.set_postfix({k: f"{v:.4f}" for k, v in running.items()})
        if state.step % cfg.log_every == 0 or state.step == cfg.steps:
            accelerator.log({f"loss/{k}": v for k, v in running.items()} | {"lr": sched.get_last_lr()[0]},
                            step=state.step)
        running = {}
        last = state.step == cfg.steps
        do_sample = (state.step % cfg.sample_every == 0 or last) and sample_images is not None
        do_checkpoint = state.step % cfg.checkpoint_every == 0 or last
        if do_sample or do_checkpoint:
            ema.copy_to(ema_student.parameters())
        if do_sample and accelerator.is_main_process:
            save_sample(accelerator, out, state.step, sample_grid(ema_student, teacher, sample_images))
        if do_checkpoint:
            save_checkpoint(accelerator, out, state.step, ema_student, cfg.checkpoints_total_limit)
    progress.close()

    ema.copy_to(ema_student.parameters())
    if accelerator.is_main_process:
        export_diffusers(ema_student, out / "student", overwrite=True)
        finish_run(recipe, out, ema_student, teacher, heldout, n_bad, state.step)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out


def save_sample(accelerator: Accelerator, out: Path, step: int, grid: torch.Tensor) -> None:
    path = out / "samples" / f"step-{step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(grid).save(path)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({"samples": grid[None].add(1).div(2).clamp(0, 1).numpy()}, step=step)


def finish_run(recipe: Recipe, out: Path, student: Student, teacher: Teacher, heldout: list[Path], n_bad: int,
               step: int) -> None:
    """Evaluate the exported student on held-out images and record what the run was."""
    from tinyae.evaluate import evaluate, summary, write_report

    preset = TEACHERS.get(recipe.teacher.name)
    run = {"teacher": recipe.teacher.name, "teacher_repo": preset.repo_id if preset else recipe.teacher.name,
           "family": teacher.family, "scaling_factor": teacher.scaling_factor, "shift_factor": teacher.shift_factor,
           "steps": step, "unreadable_images": n_bad, "recipe": recipe.to_dict()}
    (out / "run.json").write_text(json.dumps(run, indent=2))
    metrics: dict = {"steps": step, "heldout_images": len(heldout)}
    if heldout:
        size = recipe.data.final_resolution or recipe.data.resolution
        images = load_eval_images(heldout, size)
        results = evaluate(student, teacher, images)
        write_report(results, out / "eval", student=student, teacher=teacher, images=images)
        metrics |= summary(results)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    logger.info("Student written to %s; metrics: %s", out / "student", json.dumps(metrics))
    if recipe.train.push_to_hub:
        from tinyae.hub import push_to_hub

        push_to_hub(out, recipe.train.push_to_hub)


def _flat(tree: dict, prefix: str = "") -> dict:
    """Tracker configs take scalars only."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat
