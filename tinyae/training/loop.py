"""Distillation under accelerate: one loop, read top to bottom.

Set up (teacher, data, student and its EMA copy, discriminator, optimizers, resume),
then for every step of every phase (long training at small crops, a short fine-tune
at the final size): the student's step and the discriminator's (tinyae.training.step),
the EMA update, logging, samples and checkpoints. At the end the EMA student is
exported, evaluated on held-out images and, if asked, pushed to the Hub. A video teacher
runs the same loop on clips: its student is a TAEHV-layout VideoStudent, exported also as
TAEHV files and evaluated on held-out clips.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from tinyae.config import Recipe
from tinyae.data.images import load_eval_images
from tinyae.data.source import TrainSource, crop_policy, make_train_loader, make_train_source
from tinyae.errors import DivergedError, OutputError, TinyaeError
from tinyae.evaluation.evaluate import evaluate, summary, write_report
from tinyae.evaluation.factors import estimate_factors
from tinyae.evaluation.lpips import LPIPSWeightsError, load_lpips
from tinyae.evaluation.video_evaluate import evaluate_video, video_summary, write_video_report
from tinyae.models.presets import TEACHERS
from tinyae.models.student import Student
from tinyae.models.video_student import VIDEO_MODELS, VideoStudent
from tinyae.models.video_teacher import VIDEO_TEACHERS, VideoTeacher, build_video_teacher
from tinyae.shipping.export import export_diffusers
from tinyae.shipping.hub import push_to_hub
from tinyae.shipping.taehv import export_taehv
from tinyae.training.budget import check_phases_fit
from tinyae.training.checkpoints import TrainState, list_checkpoints, load_checkpoint, save_checkpoint
from tinyae.training.health import HEALTH_KEYS, HealthMonitor
from tinyae.training.launch import GlobalBatch, launcher_precision, speed_up_fixed_shapes, with_precision_used
from tinyae.training.resume import apply_recipe, check_student, plan_run
from tinyae.training.samples import sample_grid, save_sample
from tinyae.training.step import AnyStudent, AnyTeacher, build_parts, build_student, distill_step, load_run_teacher
from tinyae.utils.atomic import atomic_file, atomic_folder
from tinyae.utils.dtypes import dtype_name
from tinyae.utils.threads import ThreadPolicy

logger = logging.getLogger(__name__)
EVAL_LPIPS_NET = "alex"  # what the final evaluation scores LPIPS with (evaluate's default)


def phase_plan(recipe: Recipe) -> list[tuple[int, int, int]]:
    """[(first_step, end_step, resolution)]: long training at small crops, then a short fine-tune."""
    steps, final = recipe.train.steps, recipe.data.final_steps
    if final and recipe.data.final_resolution:
        return [(0, steps - final, recipe.data.resolution), (steps - final, steps, recipe.data.final_resolution)]
    return [(0, steps, recipe.data.resolution)]


def batches(recipe: Recipe, source: TrainSource, start_step: int, rank: int, world_size: int
            ) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Yield (step, micro-batch) from `start_step` on, switching crop size at phase boundaries."""
    accum = recipe.train.grad_accum
    for first, end, resolution in phase_plan(recipe):
        if end <= start_step:
            continue
        begin = max(first, start_step)
        loader = make_train_loader(
            source, crop_policy(recipe.data, resolution), recipe.train.batch_size, recipe.train.seed,
            start_step=begin * accum, num_steps=(end - begin) * accum, rank=rank, world_size=world_size,
            num_workers=recipe.data.num_workers, pin_memory=torch.cuda.is_available(),
        )
        for i, batch in enumerate(loader):
            yield begin + i // accum, batch


def make_ema(student: AnyStudent, decay: float) -> EMAModel:
    """The EMA of the student's weights, updated with one foreach kernel per operation rather than one per tensor
    (small steps are bound by kernel launches)."""
    return EMAModel(student.parameters(), decay=decay, use_ema_warmup=True, foreach=True)


class RunningMeans:
    """Loss terms summed on the device; `pop` brings their means to the host, once per log interval, averaged over
    the processes (`accelerator`), so what is logged is the whole batch's, not the main process's share."""

    def __init__(self, accelerator: Accelerator | None = None) -> None:
        self.accelerator = accelerator
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0) + value.float()
            self.counts[name] = self.counts.get(name, 0) + 1

    def pop(self) -> dict[str, float]:
        names = sorted(self.sums)  # every process computes the same terms, so they stack in one order
        if not names:
            return {}
        means = torch.stack([self.sums[name] / self.counts[name] for name in names])
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            means = self.accelerator.reduce(means, "mean")  # one collective per log interval
        self.sums, self.counts = {}, {}
        return dict(zip(names, means.tolist()))


def distill(recipe: Recipe) -> Path:
    """Train a student for `recipe`; returns the output folder (student/, metrics.json, samples/, logs/)."""
    out = Path(recipe.train.output_dir)
    created = [folder for folder in (out / "data", out) if not folder.exists()]
    try:
        return _distill(recipe)
    except TinyaeError:
        if not (out / "recipe.json").exists():  # refused before the run began: remove what setup copied there
            if out / "data" in created:
                shutil.rmtree(out / "data", ignore_errors=True)
            if out in created and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
        raise


def _distill(recipe: Recipe) -> Path:
    started = (time.perf_counter(), time.process_time())
    # The precision actually used, in the recipe that is recorded and compared on resume.
    asked, launcher = recipe.train.mixed_precision, launcher_precision()
    recipe = with_precision_used(recipe)
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
    plan = plan_run(recipe, accelerator.is_main_process)  # output folder and resume policy: fail before any work
    # Before any work (oversubscribed CPU threads stall every operator); a resume keeps the run's first count.
    threads = ThreadPolicy(cfg.threads, keep=plan.threads)
    logger.info("Training with %s.", threads.describe())
    global_batch = GlobalBatch(cfg.batch_size, accelerator.num_processes, cfg.grad_accum)
    logger.info("%s Precision: %s (%s).", global_batch.describe(recipe.optim.lr), accelerator.mixed_precision,
                "the launcher's" if launcher else "the recipe's" if asked != "auto" else "auto without a launcher")
    speed_up_fixed_shapes(accelerator.device)
    # On a GPU, each phase's memory and time, printed first; a phase that cannot fit is refused now, not after the
    # phases before it have spent their hours (tinyae.training.budget; a CPU run is not planned).
    check_phases_fit(recipe, phase_plan(recipe), accelerator, logger.info)
    set_seed(cfg.seed)

    # The frozen teacher and the data it encodes (clips, with a time axis, for a video teacher).
    teacher = load_run_teacher(recipe, device=accelerator.device)
    video = isinstance(teacher, VideoTeacher)
    source = make_train_source(recipe, teacher, out)  # also checks a teacher cache against this teacher
    if recipe.teacher.estimate_factors and recipe.teacher.scaling_factor is None:
        # The user's explicit --teacher.scaling_factor wins; otherwise 1/std and mean of the raw latents.
        est = estimate_factors(teacher, source.preview_images(64, recipe.data.resolution))
        teacher.latent_space = teacher.latent_space.fitted(est)  # the same convention, estimated numbers
        logger.info("Estimated scaling_factor %.5f %s, shift_factor %.5f %s (for pipelines that ignore the shift: "
                    "scaling_factor %.5f).", est.scaling_factor, est.scaling_ci, est.shift_factor, est.shift_ci,
                    est.scaling_factor_without_shift)
    logger.info("Teacher %s (%s): %d latent channels, latents %s. Data: %s.", teacher.name, dtype_name(teacher.dtype),
                teacher.latent_channels, teacher.latent_space.describe(), source.describe())
    require_lpips(recipe, evaluating=bool(source.heldout))

    # The student, its EMA copy (what samples, checkpoints and the export use), discriminator, optimizers.
    fit_size = recipe.student.init_fit_resolution or recipe.data.resolution
    warm = recipe.student.init and not video
    fit_images = source.preview_images(recipe.student.init_fit_images, fit_size) if warm else None
    student = build_student(recipe, teacher, fit_images)  # a warm start aligns its donor on these crops
    ema_student = copy.deepcopy(student).to(accelerator.device).requires_grad_(False)
    ema = make_ema(student, cfg.ema_decay)
    parts = build_parts(recipe, teacher, student, accelerator)
    state = TrainState()
    tracked = {"ema": ema, "train": state, "schedule": parts.sched}
    own = {"adversary": parts.adversary}  # each process's replay buffer and generator
    if plan.checkpoint is not None:
        check_student(plan, student)
        load_checkpoint(accelerator, plan.checkpoint, tracked, own)
        apply_recipe(recipe, parts, ema)  # the checkpoint saved its own lr, betas and EMA decay
        logger.info(plan.summary(accelerator.num_processes))
    ema.to(accelerator.device)

    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        atomic_file(out / "recipe.json", lambda path: path.write_text(json.dumps(recipe.to_dict(), indent=2)))
    accelerator.init_trackers("tinyae", config=_flat(recipe.to_dict()))
    sample_size = recipe.data.final_resolution or recipe.data.resolution
    heldout = source.heldout
    # Sample grids are of images; a video run shows its quality in the held-out clips' metrics at the end.
    sample_images = load_eval_images(heldout[: cfg.sample_images], sample_size) if heldout and not video else None

    progress = tqdm(total=cfg.steps, initial=state.step, disable=not accelerator.is_local_main_process,
                    desc="distill")
    running, health, diverged = RunningMeans(accelerator), HealthMonitor(), Divergence(accelerator, out, progress)
    for step, batch in batches(recipe, source, state.step, accelerator.process_index, accelerator.num_processes):
        threads.update()
        use_adv = recipe.loss.adv_weight > 0 and step >= recipe.loss.adv_start
        measure = (step + 1) % cfg.log_every == 0  # the gradient comparison costs two extra backward passes
        terms = distill_step(parts, batch, use_adv, measure)
        running.add(terms)
        diverged.add(step + 1, terms)
        if not accelerator.sync_gradients:
            continue

        # One optimizer step is done: EMA, then logging, samples and checkpoints.
        ema.step(student.parameters())
        state.step = step + 1
        progress.update(1)
        last = state.step == cfg.steps
        if state.step % cfg.log_every == 0 or last:
            diverged.check()
            means = running.pop()  # the one host sync per log interval
            progress.set_postfix({k: f"{v:.3g}" for k, v in means.items()})
            accelerator.log({f"{'health' if k in HEALTH_KEYS else 'loss'}/{k}": v for k, v in means.items()}
                            | {"lr": parts.sched.get_last_lr()[0]}, step=state.step)
            if accelerator.is_main_process:
                health.check(means, state.step)
        do_sample = (state.step % cfg.sample_every == 0 or last) and sample_images is not None
        do_checkpoint = state.step % cfg.checkpoint_every == 0 or last
        if do_sample or do_checkpoint:
            diverged.check()
            ema.copy_to(ema_student.parameters())
            diverged.check_weights(ema_student, state.step)  # never a NaN checkpoint, sample or student
        if do_sample and accelerator.is_main_process:
            save_sample(accelerator, out, state.step, sample_grid(ema_student, teacher, sample_images))
        if do_checkpoint:
            save_checkpoint(accelerator, out, state.step, ema_student, cfg.checkpoints_total_limit,
                            plan.record(recipe, threads.threads), tracked, own)
    progress.close()

    ema.copy_to(ema_student.parameters())
    if accelerator.is_main_process:
        write_student(ema_student, out, teacher.family)
        finish_run(recipe, out, ema_student, teacher, source, state.step, plan.resumes,
                   {"wall_s": time.perf_counter() - started[0], "cpu_s": time.process_time() - started[1]},
                   {"mixed_precision": accelerator.mixed_precision, "batch": global_batch.to_dict(),
                    "cpu_threads": {"setting": cfg.threads, "used": threads.used}})
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out


def require_lpips(recipe: Recipe, evaluating: bool) -> None:
    """Find the pretrained LPIPS weights the loss (loss.lpips_weight) and the final evaluation of held-out images
    need before training, not after it: on an offline node where `tinyae lpips` never ran, a run would otherwise
    spend its hours and then fail."""
    needs = {recipe.loss.lpips_net: "the loss (loss.lpips_weight)"} if recipe.loss.lpips_weight > 0 else {}
    if evaluating:
        needs[EVAL_LPIPS_NET] = " and ".join(filter(None, [needs.get(EVAL_LPIPS_NET), "the final evaluation"]))
    for net, what in needs.items():
        try:
            with torch.random.fork_rng(devices=[]):  # its random init must not shift the student's
                load_lpips(net)
        except LPIPSWeightsError as exc:
            reason = str(exc)
            raise LPIPSWeightsError(f"Refused before training: {what} needs pretrained LPIPS weights, and "
                                    f"{reason[0].lower()}{reason[1:]}") from None


def write_student(student: AnyStudent, out: Path, family: str | None) -> None:
    """The run's student/ folder (a video student's also as TAEHV files in taehv/); a write that fails says what
    is safe: the checkpoints, the last one final."""
    try:
        if isinstance(student, VideoStudent):
            with atomic_folder(out / "student", overwrite=True) as tmp:
                student.save_pretrained(tmp)
            comfyui_fp16 = VIDEO_MODELS[student.taehv_name].comfyui_fp16
            export_taehv(student, out / "taehv", dtype="fp32" if comfyui_fp16 is False else "fp16", overwrite=True)
        else:
            export_diffusers(student, out / "student", overwrite=True, family=family)
    except OutputError as exc:
        last = list_checkpoints(out)[-1]
        raise type(exc)(f"{str(exc).removesuffix('.')}; the checkpoints are intact (the last, '{last}', holds the "
                        "final weights: --resume latest writes student/ again)."
                        ) from exc


class Divergence:
    """The first step whose loss was not finite, kept on the device; checked (one host sync) before anything is
    logged or saved, so a run that went NaN stops there and its last checkpoint stays the last good one."""

    def __init__(self, accelerator: Accelerator, out: Path, progress: tqdm) -> None:
        self.accelerator, self.out, self.progress = accelerator, out, progress
        self.first = torch.full((1,), -1, dtype=torch.long, device=accelerator.device)

    def add(self, step: int, terms: dict[str, torch.Tensor]) -> None:
        finite = torch.stack([torch.isfinite(v.float()).all() for v in terms.values()]).all()
        self.first = torch.where((self.first < 0) & ~finite, step, self.first)

    def check(self) -> None:
        first = int(self.accelerator.gather(self.first).max())  # every process stops together
        if first >= 0:
            self.stop(f"the loss at step {first} is not a finite number (NaN or inf)")

    def check_weights(self, student: Student, step: int) -> None:
        if not torch.stack([torch.isfinite(p).all() for p in student.parameters()]).all():
            self.stop(f"the student's weights at step {step} are not finite numbers (NaN or inf)")

    def stop(self, what: str) -> None:
        kept = list_checkpoints(self.out)
        last = f"the last good checkpoint is '{kept[-1]}'" if kept else "no checkpoint had been written"
        self.progress.close()  # the message starts on a line of its own
        raise DivergedError(f"Training stopped: {what}, so nothing from then on was saved and {last}; lower "
                            "optim.lr or the loss weights and resume with --resume latest.")


def finish_run(recipe: Recipe, out: Path, student: AnyStudent, teacher: AnyTeacher, source: TrainSource,
               step: int, resumes: list[dict] | None = None, seconds: dict | None = None,
               session: dict | None = None) -> None:
    """Evaluate the exported student on held-out images (clips, for a video student); record what the run was,
    each resume's changes, how this session ran (`session`: precision, global batch, CPU threads) and what it
    cost (wall and CPU seconds)."""
    video = isinstance(student, VideoStudent)
    preset = TEACHERS.get(recipe.teacher.name) or VIDEO_TEACHERS.get(recipe.teacher.name)
    run = {"teacher": recipe.teacher.name, "teacher_repo": preset.repo_id if preset else recipe.teacher.name,
           "family": teacher.family, "scaling_factor": getattr(teacher, "scaling_factor", None),
           "shift_factor": getattr(teacher, "shift_factor", None), "latent_space": teacher.latent_space.to_dict(),
           "teacher_dtype": dtype_name(teacher.dtype),  # what teacher.dtype (auto: per device and VAE) resolved to
           "base_model": getattr(preset, "base_model", None), "steps": step, "unreadable_images": source.n_bad,
           "time": seconds or {}, **(session or {}), "recipe": recipe.to_dict(), "resumes": resumes or []}
    if video:
        run |= {"taehv_model": student.taehv_name, "frames": recipe.data.frames}
    atomic_file(out / "run.json", lambda path: path.write_text(json.dumps(run, indent=2)))
    metrics: dict = {"steps": step, f"heldout_{'sources' if video else 'images'}": len(source.heldout)}
    if source.heldout and video:
        clips = source.heldout_clips(recipe.data.final_resolution or recipe.data.resolution)
        stands_for = getattr(VIDEO_TEACHERS.get(recipe.teacher.name), "stands_for", None)
        reference = build_video_teacher(stands_for) if stands_for else None  # speed only: random weights
        results = evaluate_video(student, teacher, clips, reference=reference)
        write_video_report(results, out / "eval")
        metrics |= video_summary(results)
    elif source.heldout:
        size = recipe.data.final_resolution or recipe.data.resolution
        images = load_eval_images(source.heldout, size)
        # Also where users decode (data.eval_resolution): what a decoder learned on small crops need not hold there.
        extra = recipe.data.eval_resolution if recipe.data.eval_resolution not in (None, size) else None
        sets = [images] + ([load_eval_images(source.heldout, extra)] if extra else [])
        results = evaluate(student, teacher, sets)
        write_report(results, out / "eval", student=student, teacher=teacher, images=sets)
        metrics |= summary(results, size) | ({f"at_{extra}px": summary(results, extra)} if extra else {})
    atomic_file(out / "metrics.json", lambda path: path.write_text(json.dumps(metrics, indent=2)))
    logger.info("Student written to %s; metrics: %s", out / "student", json.dumps(metrics))
    if recipe.train.push_to_hub:
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
