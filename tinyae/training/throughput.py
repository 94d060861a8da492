"""Training throughput: the teacher on the fly against the teacher cache, measured in one run.

For each crop size, one student takes training steps in turn from two loaders:
(a) image crops, with the teacher encoding them (and decoding, for teacher
targets) inside the step, as a run without a cache does; (b) the teacher cache
holding the same crops and their latents. Alternating the two lets background
load hit them alike. Each step is split into data (loader), teacher, student
(forward, losses, backward, optimizer) and discriminator time; the first step
of each is a warm-up and not counted. The student step is the training loop's
own `distill_step` (clipping, schedule and all) with the recipe's losses.
Teachers are built from their architecture with random weights: speed does not
depend on weights, and nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate import Accelerator

from tinyae.config import Recipe, load_recipe
from tinyae.data.cache import build_cache, finish_cache, open_cache
from tinyae.data.images import sample_photos
from tinyae.data.source import crop_policy, make_train_loader, make_train_source
from tinyae.models.teacher import build_teacher
from tinyae.training.step import DistillParts, build_parts, build_student, distill_step
from tinyae.utils.tables import markdown_table

PARTS = ("data", "teacher", "student", "disc")


def timed_step(parts: DistillParts, batches: Iterator[dict]) -> dict[str, float]:
    """One training step from `batches` (the loop's own `distill_step`); seconds spent in each part."""
    device = parts.accelerator.device
    clock = [time.perf_counter()]

    def mark(part: str = "data") -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        clock.append(time.perf_counter())

    batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
    mark()
    distill_step(parts, batch, parts.recipe.loss.adv_weight > 0, clock=mark)
    return {part: b - a for part, a, b in zip(PARTS, clock, clock[1:])}


def bench_recipe(resolution: int, batch_size: int, photos: Path, target: str = "image", adv: bool = True,
                 lpips: bool = True, channels_last: bool = False, teacher: str = "sd") -> Recipe:
    """The preset's recipe at one crop size, every loss term on from step 0."""
    overrides = {"teacher": {"name": teacher},
                 "data": {"path": str(photos), "resolution": resolution, "final_steps": 0, "holdout": 0},
                 "loss": {"target": target, "adv_start": 0, "adv_weight": 0.3 if adv else 0.0,
                          "lpips_weight": 0.1 if lpips else 0.0},
                 "train": {"batch_size": batch_size, "channels_last": channels_last, "mixed_precision": "no"}}
    return load_recipe(teacher if teacher in ("sd", "sdxl", "sd3", "flux") else "sd", overrides)


def bench_train(resolutions: tuple[int, ...] = (128, 256), batch_size: int = 2, steps: int = 3,
                teacher: str = "sd", target: str = "image", adv: bool = True, lpips: bool = True,
                channels_last: bool = False, threads: int | None = 1, device: str = "cpu",
                workdir: str | Path | None = None, data: str | Path | None = None) -> dict:
    """images/s and per-part seconds per image, on the fly vs. from the cache, for each crop size.

    Crops come from the folder `data` (real photos: their decoding is part of the data time), else from
    scikit-image's sample photos (small PNGs). Caches go to `workdir`, or to a temporary folder removed afterwards.
    """
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="tinyae-bench-train-") as tmp:
            return bench_train(resolutions, batch_size, steps, teacher, target, adv, lpips, channels_last, threads,
                               device, tmp, data)
    if threads:
        torch.set_num_threads(threads)
    workdir = Path(workdir)
    photos = Path(data) if data is not None else sample_photos(workdir / "photos")
    vae = build_teacher(teacher, device=device)
    accelerator = Accelerator(cpu=device == "cpu")
    results = []
    for resolution in resolutions:
        recipe = bench_recipe(resolution, batch_size, photos, target, adv, lpips, channels_last, teacher)
        source = make_train_source(recipe)
        samples = (steps + 1) * batch_size  # the warm-up step and `steps` timed steps
        start = time.perf_counter()
        cache_dir = build_cache(
            vae, lambda i, n: source.crops(crop_policy(recipe.data, resolution), recipe.train.seed, i, n),
            workdir / f"cache-{resolution}",
            resolution, samples, shard_size=samples, with_targets=target == "teacher", batch_size=batch_size,
        )
        finish_cache(cache_dir)
        build_seconds = time.perf_counter() - start
        cached = dataclasses.replace(source, caches={resolution: open_cache(cache_dir, vae, resolution)})
        parts = build_parts(recipe, vae, build_student(recipe, vae).to(vae.device), accelerator)
        policy = crop_policy(recipe.data, resolution)
        loaders = {mode: iter(make_train_loader(src, policy, batch_size, recipe.train.seed, num_steps=steps + 1))
                   for mode, src in (("on the fly", source), ("cache", cached))}
        times: dict[str, list[dict[str, float]]] = {mode: [] for mode in loaders}
        for i in range(steps + 1):
            for mode, batches in loaders.items():  # interleaved: background load hits both alike
                split = timed_step(parts, batches)
                if i > 0:
                    times[mode].append(split)
        for mode, runs in times.items():
            per_image = {p: statistics.median(r[p] for r in runs) / batch_size for p in PARTS}
            total = statistics.median(sum(r.values()) for r in runs) / batch_size
            results.append({"resolution": resolution, "mode": mode, "images_per_s": 1 / total,
                            "seconds_per_image": per_image, "steps": len(runs)})
        results.append({"resolution": resolution, "mode": "cache build", "images_per_s": samples / build_seconds,
                        "seconds_per_image": None, "steps": 0})
    return {"teacher": f"{teacher} architecture, random weights", "data": str(data) if data else "sample photos",
            "batch_size": batch_size, "target": target,
            "adv": adv, "lpips": lpips, "channels_last": channels_last, "threads": torch.get_num_threads(),
            "device": device, "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
            "results": results}


def speedup(report: dict, resolution: int) -> float:
    """Cache images/s over on-the-fly images/s at one crop size."""
    rate = {r["mode"]: r["images_per_s"] for r in report["results"] if r["resolution"] == resolution}
    return rate["cache"] / rate["on the fly"]


def format_report(report: dict) -> str:
    rows = []
    for r in report["results"]:
        split = r["seconds_per_image"]
        parts = [f"{split[p] * 1000:.0f}" for p in PARTS] if split else ["-"] * len(PARTS)
        rows.append([str(r["resolution"]), r["mode"], f"{r['images_per_s']:.3f}", *parts])
    header = ["px", "source", "images/s", *(f"{p} ms/img" for p in PARTS)]
    lines = [markdown_table(header, rows), ""]
    for resolution in sorted({r["resolution"] for r in report["results"]}):
        lines.append(f"{resolution} px: the cache trains {speedup(report, resolution):.2f}x faster than running "
                     "the teacher on the fly")
    lines.append(f"({report['teacher']}; data {report.get('data', 'sample photos')}; batch {report['batch_size']}, "
                 f"target {report['target']}, "
                 f"adversarial {'on' if report['adv'] else 'off'}, LPIPS {'on' if report['lpips'] else 'off'}, "
                 f"channels_last {'on' if report['channels_last'] else 'off'}, {report['device']}, "
                 f"{report['threads']} threads, {report['machine']}; medians over timed steps; 'cache build' is the "
                 "one-time encoding)")
    return "\n".join(lines)
