"""A check-up of the training job on the device(s) present, in minutes: the library's own step, for real.

A few steps of each phase at the recipe's real crop size and batch (`distill_step`, data from
the recipe's source), then: images per second, peak memory against the plan, the precision
accelerate actually uses, whether compiled code ran (dynamo's graph count), a save-then-resume
check (save a checkpoint, take a step, load it, take the same step again: the weights must be
bit-identical), and with several processes whether every rank holds the same weights after
DDP's steps. Nothing here is a second training step; it is what `distill` runs, timed.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from tinyae.config import Recipe
from tinyae.data.source import crop_policy, make_train_loader, make_train_source
from tinyae.training.budget import GIB, LiveBytes, live_storages, plan_run_memory
from tinyae.training.checkpoints import TrainState, load_checkpoint, save_checkpoint
from tinyae.training.launch import speed_up_fixed_shapes, with_precision_used
from tinyae.training.loop import make_ema, phase_plan
from tinyae.training.resume import RunPlan
from tinyae.training.step import build_parts, build_student, distill_step, load_run_teacher
from tinyae.utils.tables import markdown_table


def compiled_graphs() -> int:
    """Graphs torch.compile has built in this process (0: nothing ran compiled)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def checkup(recipe: Recipe, steps: int = 3, with_plan: bool = True) -> dict:
    """Run the check-up; returns what `format_checkup` prints (only the main process's figures are complete)."""
    graphs_before = compiled_graphs()  # what this process compiled before the check-up is not its evidence
    recipe = with_precision_used(recipe)  # the launcher's precision, or a refusal, exactly as distill decides
    train = recipe.train
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
        mixed_precision=train.mixed_precision, gradient_accumulation_steps=train.grad_accum)
    device = accelerator.device
    speed_up_fixed_shapes(device)
    plan = plan_run_memory(recipe, phase_plan(recipe), precision=accelerator.mixed_precision) if (
        with_plan and accelerator.is_main_process) else None
    teacher = load_run_teacher(recipe, device=device)
    source = make_train_source(recipe, teacher)
    student = build_student(recipe, teacher).to(device)
    ema_student = copy.deepcopy(student).requires_grad_(False)
    ema = make_ema(student, train.ema_decay)
    ema.to(device)
    parts = build_parts(recipe, teacher, student, accelerator)
    state = TrainState()
    tracked = {"ema": ema, "train": state, "schedule": parts.sched, "adversary": parts.adversary}
    use_adv = recipe.loss.adv_weight > 0  # from step 0: the discriminator's memory is part of every phase's peak

    def step(batch: dict) -> None:
        for _ in range(train.grad_accum):
            distill_step(parts, batch, use_adv)
        ema.step(student.parameters())
        state.step += 1

    phases, kept = [], None
    for index, (_, _, resolution) in enumerate(phase_plan(recipe)):
        loader = make_train_loader(source, crop_policy(recipe.data, resolution), train.batch_size, train.seed,
                                   num_steps=steps + 1, rank=accelerator.process_index,
                                   world_size=accelerator.num_processes, num_workers=recipe.data.num_workers,
                                   pin_memory=device.type == "cuda")
        batches = iter(loader)
        kept = next(batches)
        step(kept)  # warm-up: compilation, cuDNN's choices, Adam's state
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        tracker = LiveBytes(set(live_storages())) if device.type == "cpu" else None
        static = sum(live_storages().values()) if tracker else 0
        start = time.perf_counter()
        with tracker or _nothing():
            for batch in batches:
                step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else static + tracker.peak
        planned = plan.phases[index].total if plan else None
        images = steps * train.batch_size * train.grad_accum * accelerator.num_processes
        phases.append({"resolution": resolution, "batch": train.batch_size, "images_per_s": images / seconds,
                       "peak": peak, "planned": planned})

    # Save, step, load, step again: the second step must give the first's weights, bit for bit.
    with tempfile.TemporaryDirectory(prefix="tinyae-doctor-") as tmp:
        folder = [tmp]
        if accelerator.num_processes > 1:  # one checkpoint, the main process's folder
            broadcast_object_list(folder)
        tmp = folder[0]
        checkpoint = save_checkpoint(accelerator, Path(tmp), state.step, ema_student, 1, RunPlan().record(recipe),
                                     tracked)
        step(kept)
        after = [p.detach().clone() for p in student.parameters()]
        load_checkpoint(accelerator, checkpoint, tracked)
        step(kept)
        again = [p.detach() for p in student.parameters()]
        accelerator.wait_for_everyone()
    differences = [float((a.float() - b.float()).abs().max()) for a, b in zip(after, again)]
    same_ranks = None
    if accelerator.num_processes > 1:
        checksum = torch.stack([p.detach().double().sum() for p in student.parameters()]).sum().view(1)
        sums = accelerator.gather(checksum)
        same_ranks = bool((sums == sums[0]).all())
    return {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "processes": accelerator.num_processes, "precision": accelerator.mixed_precision,
            "compiled_graphs": compiled_graphs() - graphs_before, "compile": train.compile, "phases": phases,
            "resume_identical": max(differences, default=0.0) == 0.0, "resume_max_difference": max(differences),
            "ranks_identical": same_ranks, "main": accelerator.is_main_process}


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def format_checkup(report: dict) -> str:
    gb = lambda b: "-" if b is None else f"{b / GIB:.2f}"  # noqa: E731
    rows = [[str(p["resolution"]), str(p["batch"]), f"{p['images_per_s']:.2f}", gb(p["peak"]), gb(p["planned"])]
            for p in report["phases"]]
    lines = [markdown_table(["px", "batch/device", "images/s", "peak GB", "plan GB"], rows),
             f"device: {report['device']} x {report['processes']} process(es); precision in use: "
             f"{report['precision']}; compile: "
             + ("active" if report["compiled_graphs"] else "not active")
             + f" ({report['compiled_graphs']} graphs; train.compile {str(report['compile']).lower()})",
             "save-then-resume: the next step's weights are "
             + ("bit-identical" if report["resume_identical"] else
                f"NOT identical (largest difference {report['resume_max_difference']:.3g})")]
    if report["ranks_identical"] is not None:
        lines.append("DDP: every process holds the same weights after the steps: "
                     + ("yes" if report["ranks_identical"] else "NO"))
    return "\n".join(lines)
