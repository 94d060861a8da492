"""What each phase of a run costs on a GPU, known before its first step: memory measured and scaled, time from MACs.

A phase that runs out of memory after the phases before it have spent their hours wastes
them all, so the memory of each phase is measured, not guessed: the library's own
`distill_step` runs on this CPU at two small crop sizes (and at batch 1), in the run's
precision, while `LiveBytes` adds up every tensor storage the step creates and frees, part by
part (the teacher's no-grad encode, the student's step with the discriminator's fake path,
the discriminator's step). Activations grow linearly with pixels and batch, so each part is
fitted as `const + batch * (a + k * pixels)` and read at the phase's size. Weights, gradients,
Adam's state, the EMA copy and the teacher's weights are counted from the built models.

The measurement runs in a child process on the CPU: accelerate's state is one per process and
a run (or a test) may already hold another precision or device. The teacher there is the
preset's architecture with random weights (memory does not depend on weights; nothing is
downloaded), or a local folder's VAE. Time is a MAC count at the phase's size (forward once
for what runs without gradients, three times for what trains) over an assumed share of the
card's bf16 (or TF32) throughput: an estimate to plan with, not a measurement.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import hashlib
import json
import os
import re
import subprocess
import sys
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from diffusers.training_utils import EMAModel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from tinyae.config import Recipe, recipe_from_dict
from tinyae.errors import ConfigError, OutputError, TinyaeError
from tinyae.evaluation.macs import count_macs, meta_copy
from tinyae.models.discriminator import build_discriminator
from tinyae.models.presets import TEACHERS
from tinyae.models.teacher import build_teacher, load_teacher
from tinyae.models.video_teacher import is_video_teacher
from tinyae.training.step import build_parts, build_student, distill_step
from tinyae.utils.atomic import atomic_file
from tinyae.utils.tables import markdown_table

Phases = list[tuple[int, int, int]]  # tinyae.training.loop.phase_plan: [(first_step, end_step, resolution)]

GIB = 2**30


@dataclass(frozen=True)
class Gpu:
    name: str
    memory: float  # bytes a process can have on an idle card (what torch.cuda.mem_get_info reports free)
    bf16_tflops: float  # dense tensor-core peak
    tf32_tflops: float


GPUS = {
    "a100": Gpu("A100-80GB", 79.1 * GIB, 312, 156),
    "h100": Gpu("H100-80GB", 79.1 * GIB, 989, 495),
    "l4": Gpu("L4 (24 GB)", 22.0 * GIB, 121, 60),
    "4090": Gpu("RTX 4090 (24 GB)", 23.5 * GIB, 165, 83),
}
UTILISATION = 0.35  # assumed share of the peak a step reaches: convolutions of 64-128 channels, fused nothing
HEADROOM = 0.9  # share of free memory a phase may plan for: allocator fragmentation, cuDNN workspaces, the rest
SMALL = (64, 96)  # crop sizes measured on the CPU (multiples of 16: FLUX.2's patches tile them)


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages created under it and still alive, with the peak, per named part.

    Storages that existed before (weights, optimizer state, the batch) are `known` and not counted;
    a storage is counted once however many views of it an operator returns, and leaves the count
    when it is freed.
    """

    def __init__(self, known: set[int]):
        super().__init__()
        self.known, self.live, self.peak = set(known), 0, 0
        self.parts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                ptr = storage.data_ptr()
                if ptr and ptr not in self.known:
                    self.known.add(ptr)
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, ptr, storage.nbytes())
        return out

    def _free(self, ptr: int, nbytes: int) -> None:
        self.live -= nbytes
        self.known.discard(ptr)

    def mark(self, part: str) -> None:
        """The peak since the last mark is `part`'s; the next part starts from what is alive now."""
        self.parts[part] = max(self.parts.get(part, 0), self.peak)
        self.peak = self.live


def live_storages() -> dict[int, int]:
    """{data pointer: bytes} of every tensor storage alive in this process."""
    gc.collect()
    found = {}
    with warnings.catch_warnings():  # isinstance on every object wakes deprecated module attributes
        warnings.simplefilter("ignore")
        objects = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for obj in objects:
        if obj.device.type == "meta":
            continue
        try:
            storage = obj.untyped_storage()
            pointer = storage.data_ptr()
        except (RuntimeError, NotImplementedError):  # tracing tensors left by torch.compile (fake, functional):
            continue  # they hold no memory of their own
        if pointer:
            found[pointer] = storage.nbytes()
    return found


# --- measuring on this CPU (in the child process) ---------------------------------------------------------------


def _variant(recipe: Recipe, resolution: int, batch: int, precision: str, adv: bool, checkpointing: bool) -> Recipe:
    """The recipe as one phase at `resolution`, every term on from step 0 (the discriminator's only if `adv`)."""
    d = recipe.to_dict()
    d["data"].update(resolution=resolution, final_resolution=None, final_steps=0, cache=None, final_cache=None,
                     num_workers=0)
    d["train"].update(batch_size=batch, grad_accum=1, compile=False, mixed_precision=precision)
    d["student"].update(init=None, gradient_checkpointing=checkpointing)
    d["loss"]["adv_start"] = 0
    if not adv:
        d["loss"].update(adv_weight=0.0, encoder_adv_weight=0.0)
    return recipe_from_dict(d)


def measure_step(recipe: Recipe, teacher, accelerator, resolution: int, batch: int, adv: bool = True,
                 checkpointing: bool = False, run_teacher: bool = True) -> dict[str, int]:
    """Bytes of one real `distill_step` at `resolution` x `batch`: `static` (every storage alive before the step:
    weights, EMA, Adam state, replay buffer, batch), and the peak each part adds (`teacher`, `student`, `disc`).

    One step is taken first, untracked, so Adam's state and the replay buffer exist as in a running job.
    """
    variant = _variant(recipe, resolution, batch, accelerator.mixed_precision, adv, checkpointing)
    torch.manual_seed(0)
    student = build_student(variant, teacher)
    _ema_student = copy.deepcopy(student).requires_grad_(False)  # the loop's EMA copy and shadow weights
    ema = EMAModel(student.parameters(), decay=0.999)
    parts = build_parts(variant, teacher, student, accelerator)
    images = torch.rand(batch, 3, resolution, resolution) * 2 - 1
    batch_dict = {"images": images}
    if not run_teacher:
        batch_dict["latents"] = teacher.encode(images)
        if variant.loss.target == "teacher":
            batch_dict["targets"] = teacher.decode(batch_dict["latents"])
    use_adv = variant.loss.adv_weight > 0
    distill_step(parts, batch_dict, use_adv)
    ema.step(student.parameters())
    known = live_storages()
    tracker = LiveBytes(set(known))
    with tracker:
        distill_step(parts, batch_dict, use_adv, clock=tracker.mark)
    for prepared in (accelerator._models, accelerator._optimizers):  # measured parts must not outlive this step
        prepared.clear()
    return {"static": sum(known.values()), **{p: tracker.parts.get(p, 0) for p in ("teacher", "student", "disc")}}


def _counts(recipe: Recipe, teacher, resolution: int) -> dict[str, Any]:
    """Parameter counts and the MACs of one image at `resolution` (on the meta device: no memory, no time)."""
    variant = _variant(recipe, resolution, 1, "no", True, False)
    student = build_student(variant, teacher)
    c = variant.loss
    disc = build_discriminator(c.disc, student.arch.latent_channels, c.disc_width, 0)
    side = resolution // student.downscale
    image = torch.empty(1, 3, resolution, resolution, device="meta")
    latent = torch.empty(1, student.arch.latent_channels, side, side, device="meta")
    macs: dict[str, int | None] = {}
    meta_student, meta_disc = meta_copy(student), meta_copy(disc)
    macs["student_encode"] = count_macs(meta_student.encode, image)
    macs["student_decode"] = count_macs(meta_student.decode, latent)
    macs["disc"] = count_macs(meta_disc, image, latent)
    try:
        meta_vae = meta_copy(teacher.vae)
        vae_image = image.unsqueeze(2) if teacher.kind.frames else image
        macs["teacher_encode"] = count_macs(meta_vae.encode, vae_image)
        raw = meta_vae.encode(vae_image)
        raw = raw.latent_dist.mean if hasattr(raw, "latent_dist") else getattr(raw, "latent", None)
        macs["teacher_decode"] = count_macs(lambda z: meta_vae.decode(z), raw) if raw is not None else None
    except Exception:  # a VAE whose code does not run on meta tensors: its time is not estimated
        macs["teacher_encode"] = macs["teacher_decode"] = None
    return {"student_params": sum(p.numel() for p in student.parameters()),
            "disc_params": sum(p.numel() for p in disc.parameters()),
            "teacher_params": sum(p.numel() for p in teacher.vae.parameters()), "macs": macs}


def planning_teacher(recipe: Recipe):
    """The recipe's teacher for planning, in fp32: a preset's architecture with random weights, or a local folder."""
    name = recipe.teacher.name
    preset = TEACHERS.get(name)
    if preset is not None and preset.arch:
        return build_teacher(name)
    if (preset is not None and Path(preset.repo_id).exists()) or Path(name).exists():
        return load_teacher(dataclasses.replace(recipe.teacher, dtype="fp32"))
    raise ConfigError(f"Cannot plan for teacher '{name}' without downloading it: tinyae plan knows the presets' "
                      "architectures and local folders; pass a local copy of the VAE (a folder with config.json).")


def measure(recipe: Recipe, precision: str, resolutions: tuple[int, ...] = SMALL, phases: list[int] = (),
            verify: list[int] = ()) -> dict:
    """Every figure a plan needs, measured in this process on the CPU (see `measured`); `verify`: also one whole
    step at batch 2 at each of these sizes (`checks`), to hold the plan's scaling against."""
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    # bf16 has fp16's sizes; accelerate takes fp16 on a CPU for fp32
    accelerator = Accelerator(cpu=True, mixed_precision="bf16" if precision == "fp16" else precision)
    teacher = planning_teacher(recipe)
    adv = recipe.loss.adv_weight > 0
    r1, r2 = resolutions
    points = [(r1, 1), (r1, 2), (r2, 2)]
    runs: dict[str, list] = {"full": [], "student": [], "checkpointed": []}
    for resolution, batch in points:
        runs["full"].append(measure_step(recipe, teacher, accelerator, resolution, batch, adv=adv))
        runs["student"].append(measure_step(recipe, teacher, accelerator, resolution, batch, adv=False,
                                            run_teacher=False))
        runs["checkpointed"].append(measure_step(recipe, teacher, accelerator, resolution, batch, adv=adv,
                                                 checkpointing=True, run_teacher=False))
    counts = {str(r): _counts(recipe, teacher, r) for r in sorted(set(phases))}
    # the replay buffer's fakes (uint8) and their latents (fp16), per pixel of the crop
    latent_bytes = 2 * teacher.latent_channels / teacher.downscale**2
    replay = recipe.loss.replay * (3 + latent_bytes) if adv else 0
    checks = {str(r): measure_step(recipe, teacher, accelerator, r, 2, adv=adv) for r in verify}
    return {"points": points, "runs": runs, "counts": counts, "precision": accelerator.mixed_precision,
            "teacher_itemsize_measured": 4, "replay_per_pixel": replay, "checks": checks,
            "teacher_params": sum(p.numel() for p in teacher.vae.parameters())}


def _child() -> None:
    """Entry point of the measuring process: a recipe and options as JSON on stdin, the figures as JSON on stdout."""
    request = json.loads(sys.stdin.read())
    recipe = recipe_from_dict(request["recipe"])
    report = measure(recipe, request["precision"], tuple(request["resolutions"]), request["phases"],
                     request["verify"])
    sys.stdout.write("\n" + json.dumps(report))


def _cache_file(request: dict) -> Path:
    """Where a measurement is kept: keyed by what shapes the memory (teacher, student, losses, precision, sizes)
    and by this module's code and torch's version, so a change to either measures again."""
    recipe = request["recipe"]
    key = json.dumps({"recipe": {k: recipe[k] for k in ("teacher", "student", "loss")}, "torch": torch.__version__,
                      "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
                      **{k: v for k, v in request.items() if k != "recipe"}}, sort_keys=True)
    root = os.environ.get("TINYAE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tinyae")
    return Path(root) / "plans" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"


def measured(recipe: Recipe, precision: str, phases: Phases, verify: list[int] = (),
             resolutions: tuple[int, ...] = SMALL, use_cache: bool = True) -> dict:
    """`measure` in a fresh process on the CPU (accelerate's state is one per process; a run on a GPU holds its own).

    Measuring takes a minute or more; the figures are kept (`_cache_file`), so a resume or a second run of the
    same recipe reads them back.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ACCELERATE_", "LOCAL_", "MASTER_", "TORCHELASTIC", "GROUP_"))
           and k not in ("RANK", "WORLD_SIZE", "ROLE_RANK", "ROLE_WORLD_SIZE")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.setdefault("OMP_NUM_THREADS", "1")
    request = {"recipe": recipe.to_dict(), "precision": precision, "resolutions": list(resolutions),
               "phases": [resolution for _, _, resolution in phases], "verify": list(verify)}
    cache = _cache_file(request) if use_cache else None
    if cache is not None and cache.is_file():
        try:
            return json.loads(cache.read_text())
        except (OSError, ValueError):
            pass  # unreadable: measure again
    done = subprocess.run([sys.executable, "-c", "from tinyae.training.budget import _child; _child()"],
                          input=json.dumps(request), capture_output=True, text=True, env=env)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise TinyaeError(f"Measuring the run's memory on this CPU failed ({lines[-1] if lines else 'no output'}); "
                          "run `tinyae plan` with the same flags to see the whole error.")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if cache is not None:
        try:
            atomic_file(cache, lambda path: path.write_text(json.dumps(report)))
        except OutputError:
            pass  # a cache that cannot be written only costs the next run a measurement
    return report


# --- the plan ----------------------------------------------------------------------------------------------------


@dataclass
class Fit:
    """Bytes = const + batch * (per_image + per_pixel * pixels), from three measured points."""

    const: float
    per_image: float
    per_pixel: float

    @classmethod
    def of(cls, points: list[tuple[int, int]], values: list[float]) -> "Fit":
        (r1, b1), (_, b2), (r2, b3) = points
        p1, p2 = r1 * r1, r2 * r2
        slope1 = (values[1] - values[0]) / (b2 - b1)  # bytes per image at r1
        const = values[0] - b1 * slope1
        slope2 = (values[2] - const) / b3  # bytes per image at r2
        per_pixel = (slope2 - slope1) / (p2 - p1)
        return cls(const, slope1 - per_pixel * p1, per_pixel)

    def at(self, resolution: int, batch: int) -> float:
        return max(0.0, self.const + batch * (self.per_image + self.per_pixel * resolution * resolution))


@dataclass
class PhaseCost:
    steps: int
    resolution: int
    batch: int
    parts: dict[str, float]  # bytes: weights (with Adam, EMA, teacher), replay, batch, teacher, student, disc
    total: float
    checkpointed_total: float  # with student.gradient_checkpointing
    per_image: float  # bytes one more image in the batch adds
    seconds_per_step: float | None
    cached: bool  # the teacher's latents come from the cache

    @property
    def hours(self) -> float | None:
        return None if self.seconds_per_step is None else self.seconds_per_step * self.steps / 3600


@dataclass
class Plan:
    recipe: Recipe
    device: str  # what `available` is the memory of
    available: float
    precision: str
    phases: list[PhaseCost] = field(default_factory=list)
    note: str = ""
    report: dict = field(default_factory=dict)  # the measured figures it was read from

    @property
    def checks(self) -> dict[str, dict]:
        return self.report.get("checks", {})

    def fits(self, phase: PhaseCost) -> bool:
        return phase.total <= HEADROOM * self.available


def _itemsize(dtype: str) -> int:
    """Bytes per element of a teacher dtype; any other setting (a GPU's automatic half precision) plans as 2."""
    return {"fp32": 4}.get(dtype, 2)


def planned_precision(setting: str) -> str:
    """The precision a plan assumes: the recipe's, else the launcher's (`accelerate launch --mixed_precision`),
    else bf16, what the README's launch command gives."""
    if setting in ("no", "fp16", "bf16"):
        return setting
    return os.environ.get("ACCELERATE_MIXED_PRECISION") or "bf16"


def phase_memory(recipe: Recipe, report: dict, resolution: int, batch: int, cached: bool = False) -> dict:
    """Bytes per device of one phase from the measured fits: its parts, `total`, `checkpointed` (with
    student.gradient_checkpointing) and `per_image` (what one more image in the batch adds)."""
    points = [tuple(p) for p in report["points"]]
    runs = report["runs"]
    teacher_scale = _itemsize(recipe.teacher.dtype) / report["teacher_itemsize_measured"]
    fits = {part: Fit.of(points, [r[part] for r in runs["full"]]) for part in ("teacher", "student", "disc")}
    student_fit = Fit.of(points, [r["student"] for r in runs["student"]])
    ckpt = {part: Fit.of(points, [r[part] for r in runs["checkpointed"]]) for part in ("student", "disc")}
    replay_per_pixel = report["replay_per_pixel"]
    pixels = resolution * resolution
    # What the measuring process held before its step, less what depends on the phase (batch, replay buffer),
    # with the teacher's weights at the run's dtype: weights, gradients' absence, Adam's state, EMA, teacher.
    (r1, b1), teacher_params = points[0], report["teacher_params"]
    fixed = (runs["full"][0]["static"] - b1 * 3 * r1 * r1 * 4 - replay_per_pixel * r1 * r1
             - teacher_params * 4 * (1 - teacher_scale))
    student_step = student_fit.at(resolution, batch)
    teacher = 0.0 if cached else fits["teacher"].at(resolution, batch) * teacher_scale
    adv_peak = max(fits["student"].at(resolution, batch), fits["disc"].at(resolution, batch))
    parts = {"weights": fixed, "replay": replay_per_pixel * pixels, "batch": batch * 3 * pixels * 4,
             "teacher": teacher, "student": student_step, "disc": max(0.0, adv_peak - student_step)}
    static = parts["weights"] + parts["replay"] + parts["batch"]
    ckpt_peak = max(ckpt["student"].at(resolution, batch), ckpt["disc"].at(resolution, batch))
    slope = lambda fit: fit.per_image + fit.per_pixel * pixels  # noqa: E731
    per_image = max(0 if cached else slope(fits["teacher"]) * teacher_scale,
                    slope(fits["student"]), slope(fits["disc"])) + 3 * pixels * 4
    return {"parts": parts, "total": static + max(teacher, adv_peak), "checkpointed": static + max(teacher, ckpt_peak),
            "per_image": per_image}


def plan_phases(recipe: Recipe, report: dict, phases: Phases, device: str, available: float, gpu: Gpu | None
                ) -> Plan:
    """Each phase's memory from the measured fits, and its time on `gpu` (None: not estimated)."""
    plan = Plan(recipe, device, available, report["precision"], report=report)
    for index, (first, end, resolution) in enumerate(phases):
        batch = recipe.train.batch_size
        cached = bool(recipe.data.cache if index == 0 else recipe.data.final_cache)
        memory = phase_memory(recipe, report, resolution, batch, cached)
        macs = report["counts"].get(str(resolution), {}).get("macs", {})
        seconds = step_seconds(recipe, macs, batch, cached, gpu, plan.precision)
        plan.phases.append(PhaseCost(end - first, resolution, batch, memory["parts"], memory["total"],
                                     memory["checkpointed"], memory["per_image"], seconds, cached))
    return plan


def measured_peak(step: dict[str, int]) -> int:
    """The peak of a measured step: what was alive before it plus the largest of its parts."""
    return step["static"] + max(step["teacher"], step["student"], step["disc"])


def step_seconds(recipe: Recipe, macs: dict, batch: int, cached: bool, gpu: Gpu | None, precision: str
                 ) -> float | None:
    """Seconds per optimizer step on `gpu`, from MACs: the trained student 3x its forward (forward, backward for
    inputs and weights), the frozen teacher 1x, the discriminator 1x per scoring pass and 2x per backward."""
    if gpu is None or "student_encode" not in macs or (not cached and macs.get("teacher_encode") is None):
        return None
    c = recipe.loss
    teacher = 0 if cached else macs["teacher_encode"] + (macs["teacher_decode"] or 0) * (c.target == "teacher")
    student = 3 * (macs["student_encode"] + macs["student_decode"] * (2 if c.encoder_adv_weight > 0 else 1))
    disc = 0
    if c.adv_weight > 0:
        disc = (c.adv_loss == "relativistic") + 1 + 2  # real scores, fake scores, backward into the fake
        disc += 2 if c.adv_scale in ("adaptive", "normalized") else 0  # the balance's extra backward
        disc += 3  # the discriminator's own step
    per_image = teacher + student + disc * macs["disc"]
    tflops = gpu.bf16_tflops if precision in ("bf16", "fp16") else gpu.tf32_tflops
    return recipe.train.grad_accum * batch * per_image * 2 / (tflops * 1e12 * UTILISATION)


def format_plan(plan: Plan) -> str:
    """The plan as a table, one row per phase, and what does not fit."""
    gb = lambda b: f"{b / GIB:.1f}"  # noqa: E731
    rows = []
    for p in plan.phases:
        fits = "yes" if plan.fits(p) else "NO"
        rows.append([f"{p.steps}", f"{p.resolution}", f"{p.batch}", gb(p.parts["weights"] + p.parts["batch"]),
                     gb(p.parts["replay"]), "cache" if p.cached else gb(p.parts["teacher"]), gb(p.parts["student"]),
                     gb(p.parts["disc"]), gb(p.total), gb(p.checkpointed_total), f"{gb(plan.available)}", fits,
                     "-" if p.seconds_per_step is None else f"{p.seconds_per_step:.3f}",
                     "-" if p.hours is None else f"{p.hours:.1f}"])
    header = ["steps", "px", "batch/device", "weights GB", "replay GB", "teacher GB", "student GB", "disc GB",
              "total GB", "ckpt total GB", f"{plan.device} GB", "fits", "s/step", "hours"]
    lines = [markdown_table(header, rows),
             f"(memory per device in {plan.precision}: measured on this CPU at {SMALL[0]} and {SMALL[1]} px and "
             f"scaled by pixels and batch; the total is weights + replay + the largest of the teacher's encode and "
             f"the student's step with the discriminator; 'ckpt' with student.gradient_checkpointing; a phase fits "
             f"within {HEADROOM:.0%} of the memory; time from MACs at {UTILISATION:.0%} of the card's peak"
             f"{', not estimated for this device' if all(p.seconds_per_step is None for p in plan.phases) else ''})"]
    if plan.note:
        lines.append(plan.note)
    return "\n".join(lines)


def refusal(plan: Plan) -> str | None:
    """One sentence for the first phase that does not fit, with the fixes that would make it fit; None if all fit."""
    room = HEADROOM * plan.available
    for p in plan.phases:
        if plan.fits(p):
            continue
        first = p is plan.phases[0]
        fixes = []
        if p.checkpointed_total <= room and not plan.recipe.student.gradient_checkpointing:
            fixes.append(f"--student.gradient_checkpointing true ({p.checkpointed_total / GIB:.1f} GB)")
        fixed = p.total - p.batch * p.per_image
        fitting = int((room - fixed) // p.per_image) if p.per_image > 0 else 0
        smaller = max((b for b in range(1, p.batch) if p.batch % b == 0 and b <= fitting), default=0)
        if smaller:
            fixes.append(f"--train.batch_size {smaller} --train.grad_accum "
                         f"{plan.recipe.train.grad_accum * p.batch // smaller} (the same samples per step)")
        if not p.cached and p.parts["teacher"] >= p.total - p.parts["weights"] - p.parts["batch"] - p.parts["replay"]:
            flag = "--data.cache" if first else "--data.final_cache"
            fixes.append(f"the teacher cache (`tinyae cache-latents` at {p.resolution} px, then {flag} DIR)")
        if not first:
            fixes.append("a lower --data.final_resolution (512 takes a quarter of the memory)")
        if not fixes:
            fixes.append("a card with more memory or a lower data.resolution")
        return (f"The {p.resolution} px phase needs about {p.total / GIB:.1f} GB per device at batch {p.batch} but "
                f"{plan.device} has {plan.available / GIB:.1f} GB ({HEADROOM:.0%} usable), so it would run out of "
                f"memory; fix it with {' or '.join(fixes)}, or check the plan with `tinyae plan`.")
    return None


def present_gpu() -> Gpu | None:
    """The card this process sees, with its free memory; its speed if it is one of GPUS."""
    if not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info()
    name = torch.cuda.get_device_name()
    known = next((g for key, g in GPUS.items() if re.search(rf"\b{key}\b", name, re.IGNORECASE)), None)  # not L40S
    return Gpu(name, free, known.bf16_tflops if known else 0, known.tf32_tflops if known else 0)


def plan_on(recipe: Recipe, report: dict, phases: Phases, gpu: str | None = None) -> Plan:
    """The plan from `report` on a named card (`gpu`, one of GPUS), else the card present, else this host's RAM."""
    if gpu is not None:
        if gpu not in GPUS:
            raise ConfigError(f"Unknown --gpu '{gpu}'; pass one of {', '.join(GPUS)}.")
        card = GPUS[gpu]
        return plan_phases(recipe, report, phases, card.name, card.memory, card)
    card = present_gpu()
    if card is not None:
        return plan_phases(recipe, report, phases, card.name, card.memory, card if card.bf16_tflops else None)
    plan = plan_phases(recipe, report, phases, "host RAM", psutil.virtual_memory().available, None)
    plan.note = "No GPU here: this is the plan for this host's RAM; pass --gpu a100|h100|l4|4090 to plan for a card."
    return plan


def plan_run_memory(recipe: Recipe, phases: Phases, gpu: str | None = None, precision: str | None = None) -> Plan:
    """Measure (in a child process) and plan `recipe`'s `phases` (see `plan_on`)."""
    precision = precision or planned_precision(recipe.train.mixed_precision)
    return plan_on(recipe, measured(recipe, precision, phases), phases, gpu)


def check_phases_fit(recipe: Recipe, phases: Phases, accelerator: Accelerator, log=print) -> None:
    """Print the plan and refuse a phase that cannot fit, before any work: on GPUs only (a CPU run is a small
    check whose RAM swaps rather than fails, and measuring costs seconds it would not repay). The main process
    measures; every process gets its verdict."""
    if accelerator.device.type != "cuda" or is_video_teacher(recipe.teacher):
        return None
    verdict: list[Any] = [None, None]
    if accelerator.is_main_process:
        try:
            plan = plan_run_memory(recipe, phases, precision=accelerator.mixed_precision)
            log(format_plan(plan))
            verdict = [None, refusal(plan)]
        except TinyaeError as exc:  # a teacher it cannot build without a download: the run goes on unplanned
            log(f"No memory plan: {exc}")
    if accelerator.num_processes > 1:
        broadcast_object_list(verdict)
    if verdict[1]:
        raise ConfigError(verdict[1])
    return None
