"""Speed and memory of a student against its teacher(s), measured in one run.

For each resolution, batch size and model, `encode` gets random images and
`decode` random latents of the matching size. Each is called `warmup` times
untimed, then `repeats` times in turn with the other models (so background load
hits them alike); latency is the median. Weights do not change
speed, so presets are built from their architecture with random weights
(`build_teacher`) and nothing is downloaded; the output says so.

Peak memory is measured on the first warm-up call, the one a user pays first:
- CUDA: torch.cuda.max_memory_allocated() minus what was allocated before the call.
- CPU: growth of the process's resident memory (RSS) over its value before the
  call. Freed memory is first handed back to the OS (glibc malloc_trim) so
  earlier calls do not hide this one's allocations; the peak is the kernel's
  high-water mark (VmHWM, reset through /proc/self/clear_refs) on Linux, else
  the maximum of RSS sampled every millisecond in a thread (psutil), which can
  miss very short peaks. It is approximate: allocator caching, oneDNN scratch
  buffers and lazily loaded libraries all count.
"""

from __future__ import annotations

import ctypes
import gc
import json
import platform
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from tinyae.config import StudentConfig, TeacherConfig
from tinyae.errors import ConfigError
from tinyae.models.formats import load_student
from tinyae.models.presets import TEACHERS
from tinyae.models.student import Student
from tinyae.models.teacher import Teacher, build_teacher, load_teacher
from tinyae.models.variants import resolve_arch
from tinyae.utils.atomic import atomic_file
from tinyae.utils.dtypes import DTYPES
from tinyae.utils.tables import fmt, markdown_table

FORMAT = "tinyae-bench/1"
OPS = ("encode", "decode")
_MB = 2**20


# ---------------------------------------------------------------- memory

def _malloc_trim() -> None:
    """Give freed heap memory back to the OS (glibc only), so RSS growth shows new allocations."""
    try:
        ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols include libc's
    except (OSError, AttributeError):
        pass


def _proc_status_kb(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    if match is None:
        raise OSError(f"{field} not in /proc/self/status")
    return int(match.group(1))


def _reset_high_water_mark() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _proc_status_kb("VmHWM")
        return True
    except OSError:
        return False


class PeakRSS:
    """Peak growth of this process's resident memory inside a `with` block, in bytes (`.growth`)."""

    def __init__(self, interval: float = 0.001, use_kernel_peak: bool = True):
        self.interval, self.use_kernel_peak = interval, use_kernel_peak
        self.growth = 0
        self.method = ""

    def _sample(self) -> None:
        import psutil

        proc = psutil.Process()
        while not self._stop.is_set():
            self._peak = max(self._peak, proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        import psutil

        _malloc_trim()
        self._base = self._peak = psutil.Process().memory_info().rss
        self._kernel = self.use_kernel_peak and _reset_high_water_mark()
        if not self._kernel:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import psutil

        if self._kernel:
            self._peak = _proc_status_kb("VmHWM") * 1024
            self.method = "RSS high-water mark (VmHWM) growth"
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, psutil.Process().memory_info().rss)
            self.method = "sampled RSS growth (1 ms)"
        self.growth = max(0, self._peak - self._base)


def _peak_memory(fn: Callable[[], object], device: torch.device) -> tuple[float, str]:
    """Run fn once; return (peak extra memory in MB, how it was measured)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / _MB, "CUDA max_memory_allocated growth"
    with PeakRSS() as peak:
        fn()
    return peak.growth / _MB, peak.method


# ---------------------------------------------------------------- timing

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int = 3,
            warmup: int = 1) -> dict[str, dict]:
    """Median latency of each function over `repeats` timed calls after `warmup` untimed ones.

    The timed calls take turns (a, b, a, b, ...), so load from other processes on a shared
    machine slows all models alike and the ratios stay fair. The first untimed call of each
    function measures its peak memory; it is made even with warmup=0.
    """
    if repeats < 1:
        raise ConfigError(f"repeats must be at least 1, got {repeats}.")
    results: dict[str, dict] = {}
    with torch.inference_mode():
        for name, fn in fns.items():
            result = {"median_s": None, "min_s": None, "times_s": [], "peak_mem_mb": None, "memory_method": ""}
            try:
                result["peak_mem_mb"], result["memory_method"] = _peak_memory(fn, device)
                for _ in range(warmup - 1):
                    fn()
            except (torch.cuda.OutOfMemoryError, MemoryError):
                result.update(peak_mem_mb=None, memory_method="out of memory")  # and no timing
            results[name] = result
        for _ in range(repeats):
            for name, fn in fns.items():
                if results[name]["peak_mem_mb"] is None:
                    continue
                _sync(device)
                start = time.perf_counter()
                fn()
                _sync(device)
                results[name]["times_s"].append(time.perf_counter() - start)
    for result in results.values():
        if result["times_s"]:
            result["median_s"] = statistics.median(result["times_s"])
            result["min_s"] = min(result["times_s"])
    return results


def _ops(model: nn.Module, latent_channels: int, downscale: int, resolution: int, batch: int,
         device: torch.device, dtype: torch.dtype) -> dict[str, Callable[[], object]]:
    if resolution % downscale:
        raise ConfigError(f"Resolution {resolution} is not a multiple of the downscale factor {downscale}.")
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(batch, 3, resolution, resolution, generator=gen) * 2 - 1).to(device, dtype)
    side = resolution // downscale
    latents = torch.randn(batch, latent_channels, side, side, generator=gen).to(device, dtype)
    return {"encode": lambda: model.encode(images), "decode": lambda: model.decode(latents)}


# ---------------------------------------------------------------- models

def _params(model: nn.Module) -> dict[str, int]:
    parts = model.vae if isinstance(model, Teacher) else model
    return {part: sum(p.numel() for p in getattr(parts, part).parameters()) for part in ("encoder", "decoder")}


def default_student(teacher: Teacher) -> Student:
    """The student a recipe without a student section would train for `teacher` (its family's variant)."""
    return Student(resolve_arch(StudentConfig(), teacher.latent_channels, teacher.downscale, teacher.family))


def load_models(student: str, teachers: Sequence[str], device: str = "cpu", dtype: str = "fp32",
                teacher_weights: bool = False) -> tuple[dict[str, tuple[str, nn.Module]], dict[str, Teacher]]:
    """({teacher name: (label, its student)}, {name: teacher}) for a benchmark.

    A preset with a known architecture is built weights-free unless `teacher_weights`;
    other names (the tiny preset, Hub ids, folders) are loaded. `student` is anything
    `tinyae.models.formats.load_student` reads, benchmarked against every teacher, or "default":
    for each teacher the default student of its family (f8 TAESD shape, FLUX.2's pool variant,
    Sana's f32 layout) with random weights.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"Unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}.")
    built = {}
    for name in teachers:
        preset = TEACHERS.get(name)
        if preset is not None and preset.arch and not teacher_weights:
            built[name] = build_teacher(name, device=device, dtype=dtype)
        else:
            built[name] = load_teacher(TeacherConfig(name=name, dtype=dtype), device=device)
    students: dict[str, tuple[str, nn.Module]] = {}
    if student == "default":
        by_arch: dict[object, Student] = {}
        for name, teacher in built.items():
            model = default_student(teacher)
            model = by_arch.setdefault(model.arch, model.to(device, DTYPES[dtype]).eval())
            students[name] = ("default Student (random weights)", model)
    else:
        model = load_student(student).to(device, DTYPES[dtype]).eval()
        students = {name: (f"student {student}", model) for name in built}
    return students, built


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        return re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M).group(1).strip()
    except (OSError, AttributeError):
        return platform.processor() or platform.machine()


# ---------------------------------------------------------------- benchmark

def _student_names(students: dict[str, tuple[str, nn.Module]]) -> dict[str, str]:
    """Teacher name -> the name its student is measured under: "student", or "student:<first teacher>" if several."""
    firsts: dict[int, str] = {}
    for teacher, (_, model) in students.items():
        firsts.setdefault(id(model), teacher)
    if len(firsts) <= 1:
        return {teacher: "student" for teacher in students}
    return {teacher: f"student:{firsts[id(model)]}" for teacher, (_, model) in students.items()}


def bench(student: tuple[str, nn.Module] | dict[str, tuple[str, nn.Module]], teachers: dict[str, Teacher],
          resolutions: Sequence[int] = (256, 512), batch_sizes: Sequence[int] = (1,), repeats: int = 3,
          warmup: int = 1, log: Callable[[str], None] | None = None) -> dict:
    """Latency and peak memory of encode/decode for each teacher and its student, same inputs, same run.

    `student` is one (label, model) for every teacher, or {teacher name: (label, model)} (teachers of
    different latent spaces need different students). Returns {"format", "environment", "models",
    "measurements": [{model, op, resolution, batch, median_s, min_s, times_s, peak_mem_mb, memory_method}],
    "ratios": [{teacher, student, op, resolution, batch, latency, memory}]} with ratios = teacher / its
    student (latency: how many times faster the student is).
    """
    students = student if isinstance(student, dict) else {name: student for name in teachers} or {"": student}
    names = _student_names(students)
    first = next(iter(students.values()))[1]
    device, dtype = next(first.parameters()).device, next(first.parameters()).dtype
    models: dict[str, tuple[nn.Module, int, int]] = {}
    labels: dict[str, str] = {}
    for teacher_name, (label, model) in students.items():
        models[names[teacher_name]] = (model, model.latent_channels, model.downscale)
        labels[names[teacher_name]] = label
    for name, teacher in teachers.items():
        models[name] = (teacher, teacher.latent_channels, teacher.downscale)
    measurements = []
    for resolution in resolutions:
        for batch in batch_sizes:
            gc.collect()  # once per size: a full collection takes ~0.5 s with diffusers loaded
            ops = {name: _ops(model, channels, downscale, resolution, batch, device, dtype)
                   for name, (model, channels, downscale) in models.items()}
            for op in OPS:
                for name, result in measure({name: ops[name][op] for name in models}, device, repeats, warmup).items():
                    measurements.append({"model": name, "op": op, "resolution": resolution, "batch": batch, **result})
                    if log:
                        log(_line(measurements[-1]))
    student_info = {name: {"label": labels[name], "params": _params(models[name][0]),
                           "random_weights": labels[name].startswith("default")} for name in labels}
    return {
        "format": FORMAT,
        "environment": {
            "device": str(device), "device_name": _device_name(device), "dtype": str(dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "python": sys.version.split()[0],
            "repeats": repeats, "warmup": warmup,
        },
        "models": {
            **student_info,
            **{name: {"label": t.name, "params": _params(t), "random_weights": "random weights" in t.name,
                      "latent_space": t.latent_space.describe(), "student": names[name]}
               for name, t in teachers.items()},
        },
        "measurements": measurements,
        "ratios": _ratios(measurements, {name: names[name] for name in teachers}),
    }


def _line(m: dict) -> str:
    if m["median_s"] is None:
        return f"{m['model']:>8} {m['op']} {m['resolution']} px x{m['batch']}: out of memory"
    return (f"{m['model']:>8} {m['op']} {m['resolution']} px x{m['batch']}: {m['median_s']:.3f} s median, "
            f"peak +{m['peak_mem_mb']:.0f} MB")


def _ratios(measurements: list[dict], pairs: dict[str, str]) -> list[dict]:
    """Teacher / student of each measurement of a teacher, `pairs` naming each teacher's student."""
    by_key = {(m["model"], m["op"], m["resolution"], m["batch"]): m for m in measurements}
    ratios = []
    for (model, op, res, batch), m in by_key.items():
        if model not in pairs:
            continue
        s = by_key[(pairs[model], op, res, batch)]
        latency = m["median_s"] / s["median_s"] if m["median_s"] and s["median_s"] else None
        memory = m["peak_mem_mb"] / s["peak_mem_mb"] if m["peak_mem_mb"] and s["peak_mem_mb"] else None
        ratios.append({"teacher": model, "student": pairs[model], "op": op, "resolution": res, "batch": batch,
                       "latency": latency, "memory": memory})
    return ratios


# ---------------------------------------------------------------- report

def format_table(results: dict) -> str:
    """One row per measurement; teacher rows carry the teacher/student ratios."""
    ratios = {(r["teacher"], r["op"], r["resolution"], r["batch"]): r for r in results["ratios"]}
    rows = []
    for m in sorted(results["measurements"], key=lambda m: (m["resolution"], m["batch"], OPS.index(m["op"]))):
        r = ratios.get((m["model"], m["op"], m["resolution"], m["batch"]))
        ratio = ["", ""] if r is None else [fmt(r["latency"], ".1f") + "x", fmt(r["memory"], ".1f") + "x"]
        rows.append([str(m["resolution"]), str(m["batch"]), m["op"], m["model"], fmt(m["median_s"], ".3f"),
                     fmt(m["min_s"], ".3f"), fmt(m["peak_mem_mb"], ".0f"), *ratio])
    header = ["px", "batch", "op", "model", "median s", "min s", "peak MB", "time ratio", "memory ratio"]
    return markdown_table(header, rows)


def describe(results: dict) -> str:
    """The lines that say what was measured on what, printed above the table."""
    env, models = results["environment"], results["models"]
    lines = [f"{env['device']} ({env['device_name']}), {env['dtype']}, {env['threads']} threads, torch {env['torch']}; "
             f"median (and min) of {env['repeats']} after {env['warmup']} warm-up; ratios = teacher / its student, "
             "of median time and of peak memory."]
    for name, info in models.items():
        p = info["params"]
        weights = " - random weights: speed only, no quality" if info["random_weights"] else ""
        against = f", latents {info['latent_space']}, against {info['student']}" if "student" in info else ""
        lines.append(f"{name}: {info['label']}, {p['encoder'] / 1e6:.2f}M encoder + {p['decoder'] / 1e6:.2f}M decoder "
                     f"params{against}{weights}")
    methods = sorted({m["memory_method"] for m in results["measurements"] if m["peak_mem_mb"] is not None})
    lines.append(f"Peak memory: {', '.join(methods)} during the first call, in MB.")
    return "\n".join(lines)


def plot_latency(results: dict, path: str | Path) -> Path:
    """Latency vs resolution (log scale), encode and decode side by side, one line per model and batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, op in zip(axes, OPS):
        series: dict[tuple[str, int], list[tuple[int, float]]] = {}
        for m in results["measurements"]:
            if m["op"] == op and m["median_s"] is not None:
                series.setdefault((m["model"], m["batch"]), []).append((m["resolution"], m["median_s"]))
        for (model, batch), points in series.items():
            xs, ys = zip(*sorted(points))
            label = results["models"][model]["label"] + (f", batch {batch}" if batch != 1 else "")
            ax.plot(xs, ys, marker="o", linestyle="-" if model.startswith("student") else "--", label=label)
        ax.set(title=op, xlabel="resolution (px)", ylabel="median latency (s)", yscale="log")
        for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xticks(sorted({m["resolution"] for m in results["measurements"]}))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    env = results["environment"]
    fig.suptitle(f"{env['device_name']}, {env['dtype']}, {env['threads']} threads, batch as labelled (default 1)",
                 fontsize=9)
    path = Path(path)
    atomic_file(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def write_report(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """bench.json, bench.md (description + table) and bench.png in out_dir, each replaced atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "bench.json", "md": out_dir / "bench.md", "plot": out_dir / "bench.png"}
    text = json.dumps(results, indent=2) + "\n"
    atomic_file(paths["json"], lambda tmp: Path(tmp).write_text(text))
    md = f"# Benchmark\n\n{describe(results)}\n\n{format_table(results)}\n\n![latency vs resolution](bench.png)\n"
    atomic_file(paths["md"], lambda tmp: Path(tmp).write_text(md))
    plot_latency(results, paths["plot"])
    return paths
