"""One distillation step, shared by the training loop and the training benchmark.

A step takes a batch of crops (with the teacher's latents, when they come from the
cache), lets the frozen teacher supply what is missing, updates the student (encoder
matches the latents, decoder reconstructs the image from them, judged by the
reconstruction terms and the discriminator) and then the discriminator. What it
updates is built once per run by `build_parts`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch import nn

from tinyae.config import Recipe
from tinyae.data.images import load_eval_images, sample_photos
from tinyae.errors import ConfigError
from tinyae.models.discriminator import build_discriminator
from tinyae.models.student import Student
from tinyae.models.teacher import Teacher
from tinyae.models.variants import resolve_arch
from tinyae.training.adversarial import Adversary
from tinyae.training.losses import DistillLoss, weighted_total
from tinyae.training.warm_start import warm_start


class StudentStep(nn.Module):
    """One forward for both halves, so DDP sees (and syncs) encoder and decoder together.

    With `parts` "encoder" or "decoder" only that half runs (the other is frozen): its output is None.
    """

    def __init__(self, student: Student, parts: str = "both"):
        super().__init__()
        self.student = student
        self.parts = parts

    def forward(self, images: torch.Tensor, teacher_latents: torch.Tensor, round_trip: bool = False
                ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        latents = self.student.encode(images) if self.parts != "decoder" else None
        recon = self.student.decode(teacher_latents) if self.parts != "encoder" else None
        return latents, recon, self.student.decode(latents) if round_trip and latents is not None else None


def build_student(recipe: Recipe, teacher: Teacher, fit_images: torch.Tensor | None = None) -> Student:
    """A new student shaped for `teacher` (the recipe's variant), or one warm-started from `student.init`.

    `fit_images` (crops in [-1, 1]) align a donor's latent space to the teacher's; default: the sample photos.
    """
    config = recipe.student
    if config.latent_channels not in (None, teacher.latent_channels):
        raise ConfigError(f"student.latent_channels={config.latent_channels} but the teacher has "
                          f"{teacher.latent_channels}; drop the override or pick the matching teacher.")
    for size in (recipe.data.resolution, recipe.data.final_resolution):
        if size is not None and size % teacher.size_multiple:
            raise ConfigError(f"Crops of {size} px do not divide into the teacher's latents; set data.resolution "
                              f"and data.final_resolution to multiples of {teacher.size_multiple}.")
    if config.init:  # a published TAE, aligned to the teacher's latent space (tinyae.training.warm_start)
        if fit_images is None:
            with tempfile.TemporaryDirectory() as tmp:
                fit_images = load_eval_images(sorted(sample_photos(tmp).iterdir()), recipe.data.resolution)
        student = warm_start(recipe, teacher, fit_images)
    else:
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
    teacher: Teacher
    student: Student
    step_model: nn.Module  # StudentStep, maybe wrapped for DDP
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler  # not prepared: it steps once per optimizer step
    loss: DistillLoss
    adversary: Adversary


def build_parts(recipe: Recipe, teacher: Teacher, student: Student, accelerator: Accelerator) -> DistillParts:
    """The discriminator, both optimizers and the warm-up schedule for `student`, prepared by accelerate."""
    train, optim, loss = recipe.train, recipe.optim, recipe.loss
    disc = build_discriminator(loss.disc, student.latent_channels, loss.disc_width)
    if train.channels_last:
        student, disc = student.to(memory_format=torch.channels_last), disc.to(memory_format=torch.channels_last)
    if train.parts != "both":  # the other half stays as it started (a warm start's, or fresh)
        (student.decoder if train.parts == "encoder" else student.encoder).requires_grad_(False)
    step_model = StudentStep(torch.compile(student) if train.compile else student, train.parts)
    trained = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trained, lr=optim.lr, betas=tuple(optim.betas),
                           weight_decay=optim.weight_decay, amsgrad=optim.amsgrad)
    d_opt = torch.optim.Adam(disc.parameters(), lr=optim.disc_lr, betas=tuple(optim.betas))
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
    images = batch["images"].to(acc.device)
    latents = batch["latents"].to(acc.device) if "latents" in batch else teacher.encode(images)
    target = images
    if c.target == "teacher" and recipe.train.parts != "encoder":
        target = batch["targets"].to(acc.device) if "targets" in batch else teacher.decode(latents)
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
            last_layer = parts.student.decoder.layers[-1].weight
            rec_total = weighted_total(reconstruction) if reconstruction else None
            terms["adv"], logged["adv"] = adversary.generator_term(recon, images, latents, c.adv_weight, rec_total,
                                                                   last_layer)
            if round_trip:
                terms["encoder_adv"], logged["encoder_adv"] = adversary.generator_term(
                    rt, images, latents, c.encoder_adv_weight)
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

        # Discriminator: real images against the student's reconstructions, each with its latent.
        if use_adv:
            logged |= adversary.step(images, recon, latents)
        clock("disc")
    return {name: value.detach() for name, (_, value) in terms.items()} | logged
