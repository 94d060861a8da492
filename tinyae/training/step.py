"""One distillation step, shared by the training loop and the training benchmark.

A step takes a batch of crops (with the teacher's latents, when they come from the
cache), lets the frozen teacher supply what is missing, updates the student (encoder
matches the latents, decoder reconstructs the image from them, judged by the
reconstruction terms and the discriminator) and then the discriminator. What it
updates is built once per run by `build_parts`. With a video teacher the same step
takes clips (B, 3, F, H, W) and latents with a time axis: the student is a TAEHV-layout
VideoStudent, the pixel and LPIPS terms apply per frame, the discriminator judges groups
of consecutive frames.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch import nn

from tinyae.config import Recipe, StudentConfig
from tinyae.data.images import load_eval_images, sample_photos
from tinyae.errors import ConfigError
from tinyae.models.discriminator import build_discriminator
from tinyae.models.student import Student
from tinyae.models.teacher import Teacher, load_teacher
from tinyae.models.variants import resolve_arch
from tinyae.models.video_student import VIDEO_MODELS, VideoStudent
from tinyae.models.video_teacher import (
    VIDEO_TEACHERS,
    VideoTeacher,
    check_clip_frames,
    is_video_teacher,
    load_video_teacher_for,
    refuse_other_space,
)
from tinyae.training.adversarial import Adversary
from tinyae.training.launch import optimizer_flags
from tinyae.training.losses import DistillLoss, weighted_total
from tinyae.training.warm_start import refuse_frozen_fresh, video_warm_start, warm_start

AnyStudent = Student | VideoStudent
AnyTeacher = Teacher | VideoTeacher


class StudentStep(nn.Module):
    """One forward for both halves, so DDP sees (and syncs) encoder and decoder together.

    With `parts` "encoder" or "decoder" only that half runs (the other is frozen): its output is None.
    With `compile`, that forward is what torch.compile compiles: the student is called through `encode` and
    `decode`, which a compiled module's `forward` would never see. The student itself stays a plain module, so
    its state-dict keys (and the checkpoints) are the same with and without compile.
    """

    def __init__(self, student: AnyStudent, parts: str = "both", compile: bool = False):
        super().__init__()
        self.student = student
        self.parts = parts
        self._run = torch.compile(self._forward) if compile else self._forward

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.student.encode(x).latents if isinstance(self.student, VideoStudent) else self.student.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.student.decode(z).sample if isinstance(self.student, VideoStudent) else self.student.decode(z)

    def forward(self, images: torch.Tensor, teacher_latents: torch.Tensor, round_trip: bool = False
                ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        return self._run(images, teacher_latents, round_trip)

    def _forward(self, images: torch.Tensor, teacher_latents: torch.Tensor, round_trip: bool
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        latents = self.encode(images) if self.parts != "decoder" else None
        recon = self.decode(teacher_latents) if self.parts != "encoder" else None
        return latents, recon, self.decode(latents) if round_trip and latents is not None else None


def load_run_teacher(recipe: Recipe, device: str | torch.device = "cpu") -> AnyTeacher:
    """The recipe's frozen teacher: a video VAE (preset or folder) gives a VideoTeacher, anything else a Teacher."""
    if is_video_teacher(recipe.teacher):
        return load_video_teacher_for(recipe.teacher, device)
    return load_teacher(recipe.teacher, device=device)


def output_layer(student: AnyStudent) -> nn.Conv2d:
    """The decoder's last conv (where the adaptive adversarial weight compares gradients)."""
    return student.decoder[-1] if isinstance(student, VideoStudent) else student.decoder.layers[-1]


# Image-student fields a TAEHV layout has no place for; a video run refuses them rather than ignore them.
_IMAGE_ONLY = ("variant", "size", "encoder_widths", "decoder_widths", "encoder_blocks", "decoder_blocks",
               "encoder_stem", "pool")


def taehv_layout(config: StudentConfig, teacher: VideoTeacher) -> str:
    """The TAEHV model a video student takes: student.taehv, else the teacher preset's, else the one published
    layout of the teacher's channels, downscale and class."""
    if config.taehv is not None:
        if config.taehv not in VIDEO_MODELS:
            raise ConfigError(f"student.taehv '{config.taehv}' is not a TAEHV layout; pass one of "
                              f"{', '.join(VIDEO_MODELS)}.")
        refuse_other_space(config.taehv, teacher)
        return config.taehv
    if teacher.taehv_model:
        return teacher.taehv_model
    fits = [name for name, model in VIDEO_MODELS.items() if model.arch.latent_channels == teacher.latent_channels
            and model.arch.downscale == teacher.downscale and model.variant_of is None]  # variants: asked for
    same_class = [name for name in fits if name in {p.taehv_model for p in VIDEO_TEACHERS.values()
                                                   if p.vae_class == type(teacher.vae).__name__}]
    if len(fits) == 1 or len(same_class) == 1:
        return (same_class or fits)[0]
    raise ConfigError(f"Cannot tell which TAEHV layout a student of '{teacher.name}' ({teacher.latent_channels} "
                      f"channels, {teacher.downscale}x) takes; set student.taehv to one of "
                      f"{', '.join(fits or VIDEO_MODELS)}.")


def build_video_student(recipe: Recipe, teacher: VideoTeacher) -> VideoStudent:
    """A TAEHV-layout student for a video teacher, fresh or warm-started from an image student."""
    config, data = recipe.student, recipe.data
    set_fields = [f"student.{name}" for name in _IMAGE_ONLY if getattr(config, name) is not None]
    set_fields += [f"student.{name}" for name, default in (("act_fn", "relu"), ("upsample_fn", "nearest"),
                                                           ("gradient_checkpointing", False))
                   if getattr(config, name) != default]
    set_fields += ["train.channels_last"] if recipe.train.channels_last else []
    if set_fields:
        raise ConfigError(f"{', '.join(set_fields)} shape image students; a video student takes a published TAEHV "
                          "layout (student.taehv): drop them.")
    if config.latent_channels not in (None, teacher.latent_channels):
        raise ConfigError(f"student.latent_channels={config.latent_channels} but the teacher has "
                          f"{teacher.latent_channels}; drop the override or pick the matching teacher.")
    name = taehv_layout(config, teacher)
    arch = VIDEO_MODELS[name].arch
    if (arch.latent_channels, arch.downscale) != (teacher.latent_channels, teacher.downscale):
        raise ConfigError(f"student.taehv '{name}' reads {arch.latent_channels} channels at {arch.downscale}x but "
                          f"the teacher '{teacher.name}' writes {teacher.latent_channels} at {teacher.downscale}x; "
                          "pick the layout of the teacher's latents.")
    check_clip_frames(teacher, data.frames, arch.time_downscale)
    for size in (data.resolution, data.final_resolution):
        if size is not None and size % teacher.size_multiple:
            raise ConfigError(f"Clips of {size} px do not divide into the teacher's latents; set data.resolution "
                              f"and data.final_resolution to multiples of {teacher.size_multiple}.")
    if not config.init:
        refuse_frozen_fresh(recipe.train.parts, ["encoder", "decoder"], None)
    student = video_warm_start(recipe, name) if config.init else VideoStudent.published(name)
    student.record_teacher(teacher.name, type(teacher.vae).__name__)
    if config.mid_grey_init:
        with torch.no_grad():
            student.decoder[-1].bias.fill_(0.5)  # its frames are in [0, 1] inside: mid-grey
    return student


def build_student(recipe: Recipe, teacher: AnyTeacher, fit_images: torch.Tensor | None = None) -> AnyStudent:
    """A new student shaped for `teacher` (the recipe's variant), or one warm-started from `student.init`.

    `fit_images` (crops in [-1, 1]) align a donor's latent space to the teacher's; default: the sample photos.
    A video teacher gets a TAEHV-layout VideoStudent (`build_video_student`).
    """
    if isinstance(teacher, VideoTeacher):
        return build_video_student(recipe, teacher)
    config = recipe.student
    if config.latent_channels not in (None, teacher.latent_channels):
        raise ConfigError(f"student.latent_channels={config.latent_channels} but the teacher has "
                          f"{teacher.latent_channels}; drop the override or pick the matching teacher.")
    for size in (recipe.data.resolution, recipe.data.final_resolution, config.init_fit_resolution):
        if size is not None and size % teacher.size_multiple:
            raise ConfigError(f"Crops of {size} px do not divide into the teacher's latents; set data.resolution, "
                              "data.final_resolution and student.init_fit_resolution to multiples of "
                              f"{teacher.size_multiple}.")
    if config.init:  # a published TAE, aligned to the teacher's latent space (tinyae.training.warm_start)
        if fit_images is None:
            with tempfile.TemporaryDirectory() as tmp:
                fit_images = load_eval_images(sorted(sample_photos(tmp).iterdir()),
                                              config.init_fit_resolution or recipe.data.resolution)
        student = warm_start(recipe, teacher, fit_images)
    else:
        refuse_frozen_fresh(recipe.train.parts, ["encoder", "decoder"], None)
        student = Student(resolve_arch(config, teacher.latent_channels, teacher.downscale, teacher.family))
        if config.mid_grey_init:
            student.init_output_bias(0.0)
    student.set_gradient_checkpointing(config.gradient_checkpointing)
    return student


@dataclass
class DistillParts:
    """What a distillation step reads and updates; the models and optimizers are accelerate-prepared."""

    recipe: Recipe
    accelerator: Accelerator
    teacher: AnyTeacher
    student: AnyStudent
    step_model: nn.Module  # StudentStep, maybe wrapped for DDP
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler  # not prepared: it steps once per optimizer step
    loss: DistillLoss
    adversary: Adversary


def build_parts(recipe: Recipe, teacher: AnyTeacher, student: AnyStudent, accelerator: Accelerator) -> DistillParts:
    """The discriminator, both optimizers and the warm-up schedule for `student`, prepared by accelerate.

    A video student's discriminator judges groups of `loss.disc_frames` consecutive frames."""
    train, optim, loss = recipe.train, recipe.optim, recipe.loss
    video = isinstance(student, VideoStudent)
    if video and loss.adv_weight > 0 and recipe.data.frames < loss.disc_frames:
        raise ConfigError(f"loss.disc_frames {loss.disc_frames} is more than the {recipe.data.frames} frames of a "
                          "clip (data.frames); lower it or take longer clips.")
    channels = student.arch.latent_channels
    disc = build_discriminator(loss.disc, channels, loss.disc_width, loss.disc_frames if video else 0)
    if train.channels_last:
        student, disc = student.to(memory_format=torch.channels_last), disc.to(memory_format=torch.channels_last)
    if train.parts != "both":  # the other half stays as it started (a warm start's, or fresh)
        (student.decoder if train.parts == "encoder" else student.encoder).requires_grad_(False)
    step_model = StudentStep(student, train.parts, compile=train.compile)
    trained = [p for p in student.parameters() if p.requires_grad]
    flags = optimizer_flags(accelerator.device)
    opt = torch.optim.Adam(trained, lr=optim.lr, betas=tuple(optim.betas),
                           weight_decay=optim.weight_decay, amsgrad=optim.amsgrad, **flags)
    d_opt = torch.optim.Adam(disc.parameters(), lr=optim.disc_lr, betas=tuple(optim.betas), **flags)
    warmup = max(optim.warmup_steps, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    step_model, disc, opt, d_opt = accelerator.prepare(step_model, disc, opt, d_opt)
    seed = train.seed * 1_000_003 + accelerator.process_index
    adversary = Adversary(loss, disc, accelerator.unwrap_model(disc), d_opt, accelerator, seed)
    return DistillParts(recipe, accelerator, teacher, student, step_model, opt, sched, DistillLoss(loss), adversary)


def _no_clock(part: str) -> None:
    pass


def distill_step(parts: DistillParts, batch: dict[str, torch.Tensor], use_adv: bool, measure: bool = False,
                 clock: Callable[[str], None] = _no_clock) -> dict[str, torch.Tensor]:
    """One micro-step on `batch`; returns what to log, detached but still on the device (no host sync).

    The optimizers step when accelerate's gradient accumulation says so. With `measure`, the
    size of the adversarial gradient on the decoder's output is compared with the
    reconstruction terms' (`adv_grad_ratio`). `clock(part)` is called as "teacher", "student"
    and "disc" finish (the training benchmark times them).
    """
    acc, recipe, teacher, adversary = parts.accelerator, parts.recipe, parts.teacher, parts.adversary
    c = recipe.loss
    # Asynchronous copies (the loader pins its batches on a GPU machine): the host queues the step meanwhile.
    images = batch["images"].to(acc.device, non_blocking=True)
    latents = batch["latents"].to(acc.device, non_blocking=True) if "latents" in batch else teacher.encode(images)
    target = images
    if c.target == "teacher" and recipe.train.parts != "encoder":
        target = batch["targets"].to(acc.device, non_blocking=True) if "targets" in batch else teacher.decode(latents)
    clock("teacher")
    if recipe.train.channels_last:
        images, latents = (x.contiguous(memory_format=torch.channels_last) for x in (images, latents))

    with acc.accumulate(parts.step_model, adversary.disc):
        # Student: the encoder matches the teacher's latents, the decoder reconstructs the image from them.
        round_trip = use_adv and c.encoder_adv_weight > 0  # the recipe allows it only with train.parts both
        student_latents, recon, rt = parts.step_model(images, latents, round_trip)
        reconstruction = parts.loss.decoder_terms(recon, target) if recon is not None else {}
        terms = (parts.loss.encoder_terms(student_latents, latents) if student_latents is not None else {}
                 ) | reconstruction
        logged: dict[str, torch.Tensor] = {}
        if use_adv:
            last_layer = output_layer(parts.student).weight
            rec_total = weighted_total(reconstruction) if reconstruction else None
            # The discriminator's "real" is the decoder's target: real photos, or with loss.target teacher the
            # teacher's decodes, so a fine-tune keeps the fine-tuned VAE's look instead of drifting to the photos'.
            terms["adv"], logged["adv"] = adversary.generator_term(recon, target, latents, c.adv_weight, rec_total,
                                                                   last_layer)
            if round_trip:
                terms["encoder_adv"], logged["encoder_adv"] = adversary.generator_term(
                    rt, target, latents, c.encoder_adv_weight)
            if measure and rec_total is not None:
                weight, term = terms["adv"]
                adv_grad, = torch.autograd.grad(weight * term, recon, retain_graph=True)
                rec_grad, = torch.autograd.grad(rec_total, recon, retain_graph=True)
                logged["adv_grad_ratio"] = adv_grad.norm() / rec_grad.norm().clamp_min(1e-12)
        acc.backward(weighted_total(terms))
        if acc.sync_gradients and recipe.optim.grad_clip > 0:
            acc.clip_grad_norm_(parts.step_model.parameters(), recipe.optim.grad_clip)
        parts.opt.step()
        if acc.sync_gradients and not parts.opt.step_was_skipped:
            parts.sched.step()  # once per optimizer step, whatever the number of processes
        parts.opt.zero_grad(set_to_none=True)
        clock("student")

        # Discriminator: the decoder's targets against the student's reconstructions, each with its latent.
        if use_adv:
            logged |= adversary.step(target, recon, latents)
        clock("disc")
    return {name: value.detach() for name, (_, value) in terms.items()} | logged
