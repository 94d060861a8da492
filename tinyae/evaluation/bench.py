"""Speed, memory and MACs of students against their teacher(s), measured in one run.

Students may be several (one per size, `size_students`) and run on PyTorch and, exported
to ONNX, on ONNX Runtime (`backends`); every row of the one table says how many times
faster it is than each teacher and than the reference student (the `tiny` size), and
`cost` says where each student's MACs go, stage by stage (tinyae.evaluation.macs).

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
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from tinyae.config import StudentConfig, TeacherConfig
from tinyae.errors import ConfigError
from tinyae.evaluation.macs import macs_by_resolution, meta_copy, op_macs
from tinyae.models.formats import load_student
from tinyae.models.presets import TEACHERS
from tinyae.models.student import Student
from tinyae.models.teacher import Teacher, build_teacher, load_teacher
from tinyae.models.variants import resolve_arch
from tinyae.shipping.onnx import ONNX_DTYPES, OnnxStudent, require, write_onnx
from tinyae.utils.atomic import atomic_file
from tinyae.utils.dtypes import DTYPES
from tinyae.utils.tables import fmt, markdown_table

FORMAT = "tinyae-bench/2"
OPS = ("encode", "decode")
BACKENDS = ("torch", "onnxruntime")
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
    """({name: (label, student)}, {name: teacher}) for a benchmark.

    A preset with a known architecture is built weights-free unless `teacher_weights`;
    other names (the tiny preset, Hub ids, folders) are loaded. `student` is anything
    `tinyae.models.formats.load_student` reads, or "default": for each teacher the default
    student of its family (f8 TAESD shape, FLUX.2's pool variant, Sana's f32 layout) with
    random weights, named "student", or "student:<its first teacher>" when the teachers need several.
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
    if student != "default":
        return {"student": (f"student {student}", load_student(student).to(device, DTYPES[dtype]).eval())}, built
    by_arch: dict[object, tuple[str, Student]] = {}
    for name, teacher in built.items():
        model = default_student(teacher)
        by_arch.setdefault(model.arch, (name, model.to(device, DTYPES[dtype]).eval()))
    several = len(by_arch) > 1
    return {(f"student:{first}" if several else "student"): ("default Student (random weights)", model)
            for first, model in by_arch.values()}, built


def tiled_decode(students: dict[str, tuple[str, nn.Module]], resolution: int, seed: int = 0) -> list[dict]:
    """Peak memory and time of one tiled decode to `resolution` px per student (default tiles): what bounds a
    large preview, measured rather than promised. Random latents: memory and time do not depend on them."""
    rows = []
    for name, (_, model) in students.items():
        was_tiling = model.use_tiling
        model.enable_tiling()
        side = resolution // model.downscale
        device = next(model.parameters()).device
        z = torch.randn(1, model.latent_channels, side, side, generator=torch.Generator().manual_seed(seed)).to(device)
        decoded = []

        def decode() -> None:
            started = time.perf_counter()
            decoded.append(model.decode(z))
            _sync(device)
            decoded.append(time.perf_counter() - started)

        _malloc_trim()
        with torch.inference_mode():
            peak_mb, method = _peak_memory(decode, device)
        out, seconds = decoded
        rows.append({"model": name, "resolution": resolution, "peak_mem_mb": peak_mb,
                     "output_mb": out.numel() * out.element_size() / _MB, "seconds": seconds,
                     "memory_method": method, "finite": bool(torch.isfinite(out).all())})
        if not was_tiling:
            model.disable_tiling()
    return rows


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        return re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M).group(1).strip()
    except (OSError, AttributeError):
        return platform.processor() or platform.machine()


# ---------------------------------------------------------------- students of every size, other backends

def size_students(sizes: Sequence[str], teacher: Teacher, device: str = "cpu", dtype: str = "fp32"
                  ) -> dict[str, tuple[str, Student]]:
    """{size: (label, student)}: the teacher's default layout at each registered size, with random weights."""
    students = {}
    for size in sizes:
        arch = resolve_arch(StudentConfig(size=size), teacher.latent_channels, teacher.downscale, teacher.family)
        students[size] = (f"{size} student (random weights)", Student(arch).to(device, DTYPES[dtype]).eval())
    return students


def onnxruntime_models(students: dict[str, nn.Module], dtype: torch.dtype) -> dict[str, OnnxStudent]:
    """Each student exported to ONNX (tinyae.shipping.onnx) and loaded in ONNX Runtime on the CPU."""
    name = next((n for n, d in ONNX_DTYPES.items() if d == dtype), None)
    if name is None:
        raise ConfigError(f"The onnxruntime backend runs fp32 or fp16, not {dtype}; pass --dtype fp32 or fp16.")
    models = {}
    for key, model in students.items():
        if next(model.parameters()).device.type != "cpu":
            raise ConfigError("The onnxruntime backend is benchmarked on the CPU; pass --device cpu.")
        with tempfile.TemporaryDirectory(prefix="tinyae-bench-onnx-") as folder:  # sessions hold the graphs
            write_onnx(model, folder, name)
            models[key] = OnnxStudent(folder, name)
    return models


def where_the_cost_is(students: dict[str, nn.Module], resolution: int) -> dict[str, dict[str, dict[int, int]]]:
    """{student: {"encoder"|"decoder": {output width px: MACs}}} at `resolution`, counted on meta copies."""
    cost = {}
    for name, model in students.items():
        meta = meta_copy(model)
        f = model.downscale
        with torch.no_grad():
            latents = torch.empty(1, model.latent_channels, resolution // f, resolution // f, device="meta")
            cost[name] = {
                "encoder": macs_by_resolution(meta.encoder.layers, torch.empty(1, 3, resolution, resolution,
                                                                               device="meta")),
                "decoder": macs_by_resolution(meta.decoder.layers, latents),
            }
    return cost


# ---------------------------------------------------------------- benchmark

def bench(student: tuple[str, nn.Module] | dict[str, tuple[str, nn.Module]], teachers: dict[str, Teacher],
          resolutions: Sequence[int] = (256, 512), batch_sizes: Sequence[int] = (1,), repeats: int = 3,
          warmup: int = 1, log: Callable[[str], None] | None = None, backends: Sequence[str] = ("torch",),
          reference: str | None = None) -> dict:
    """Latency, peak memory and MACs of encode/decode for students and teachers, same inputs, same run.

    `student` is one (label, model) pair (named "student") or {name: (label, model)}, e.g. one per
    size (`size_students`). `backends` adds "onnxruntime" rows for the students. Returns
    {"format", "environment", "models", "measurements": [{model, backend, op, resolution, batch,
    macs, median_s, min_s, times_s, peak_mem_mb, memory_method}], "ratios": [...], "cost": {...}},
    where each ratio {model, backend, versus, op, resolution, batch, latency, memory} says how many
    times faster (latency) and smaller (memory) a student row is than `versus`: every teacher and the
    `reference` student on torch (default: "tiny" if benchmarked, else the first student).
    """
    students = {"student": student} if isinstance(student, tuple) else dict(student)
    # A size and a teacher may share a name (the `tiny` teacher preset and the `tiny` size): rows need both.
    teachers = {(f"{name} teacher" if name in students else name): t for name, t in teachers.items()}
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown or "torch" not in backends:
        raise ConfigError(f"Backends are {' and '.join(BACKENDS)} (torch always), got {', '.join(backends)}.")
    reference = reference or ("tiny" if "tiny" in students else next(iter(students)))  # teachers of other spaces
    # (several default students) are still compared only with their own: see _ratios
    if reference not in students:
        raise ConfigError(f"The reference student '{reference}' is not benchmarked; pass one of {', '.join(students)}.")
    first = next(iter(students.values()))[1]
    device, dtype = next(first.parameters()).device, next(first.parameters()).dtype
    runners: dict[tuple[str, str], object] = {(name, "torch"): model for name, (_, model) in students.items()}
    runners |= {(name, "torch"): teacher for name, teacher in teachers.items()}
    if "onnxruntime" in backends:
        onnx = onnxruntime_models({name: model for name, (_, model) in students.items()}, dtype)
        runners |= {(name, "onnxruntime"): model for name, model in onnx.items()}
    metas = {name: meta_copy(model) for name, model in [*((n, m) for n, (_, m) in students.items()),
                                                        *teachers.items()]}
    measurements = []
    for resolution in resolutions:
        for batch in batch_sizes:
            gc.collect()  # once per size: a full collection takes ~0.5 s with diffusers loaded
            ops = {key: _ops(model, model.latent_channels, model.downscale, resolution, batch, device, dtype)
                   for key, model in runners.items()}
            macs = {}
            for name, meta in metas.items():
                f, channels = meta.downscale, meta.latent_channels
                macs[name, "encode"] = op_macs(meta, "encode", (batch, 3, resolution, resolution), dtype)
                macs[name, "decode"] = op_macs(meta, "decode", (batch, channels, resolution // f, resolution // f),
                                               dtype)
            for op in OPS:
                timed = measure({key: ops[key][op] for key in runners}, device, repeats, warmup)
                for (name, backend), result in timed.items():
                    measurements.append({"model": name, "backend": backend, "op": op, "resolution": resolution,
                                         "batch": batch, "macs": macs[name, op], **result})
                    if log:
                        log(_line(measurements[-1]))
    return {
        "format": FORMAT,
        "environment": {
            "device": str(device), "device_name": _device_name(device), "dtype": str(dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "python": sys.version.split()[0],
            "repeats": repeats, "warmup": warmup, "backends": list(backends),
            **({"onnxruntime": _onnxruntime_version()} if "onnxruntime" in backends else {}),
        },
        "models": {
            **{name: {"label": label, "params": _params(model), "random_weights": "random weights" in label,
                      "role": "student"} for name, (label, model) in students.items()},
            **{name: {"label": t.name, "params": _params(t), "random_weights": "random weights" in t.name,
                      "role": "teacher", "latent_space": t.latent_space.describe()} for name, t in teachers.items()},
        },
        "reference": reference,
        "measurements": measurements,
        "ratios": _ratios(measurements, list(teachers), reference, {name: _latents(model) for name, model in
                                                                   [*((n, m) for n, (_, m) in students.items()),
                                                                    *teachers.items()]}),
        "cost": where_the_cost_is({name: model for name, (_, model) in students.items()}, max(resolutions)),
    }


def _onnxruntime_version() -> str:
    return require("onnxruntime").__version__


def _line(m: dict) -> str:
    name = m["model"] + ("" if m["backend"] == "torch" else f" ({m['backend']})")
    if m["median_s"] is None:
        return f"{name:>18} {m['op']} {m['resolution']} px x{m['batch']}: out of memory"
    return (f"{name:>18} {m['op']} {m['resolution']} px x{m['batch']}: {m['median_s']:.3f} s median, "
            f"peak +{m['peak_mem_mb']:.0f} MB, {m['macs'] / 1e9:.1f} GMACs")


def _latents(model: nn.Module) -> tuple[int, int]:
    """What a model's latents look like: only models that share it are compared."""
    return model.latent_channels, model.downscale


def _ratios(measurements: list[dict], teachers: list[str], reference: str, latents: dict[str, tuple[int, int]]
            ) -> list[dict]:
    """Each student row against each teacher of its latent space and against the reference student."""
    by_key = {(m["model"], m["backend"], m["op"], m["resolution"], m["batch"]): m for m in measurements}
    ratios = []
    for (model, backend, op, res, batch), m in by_key.items():
        if model in teachers:
            continue
        for versus in [*teachers, reference]:
            if (model, backend) == (versus, "torch") or latents[versus] != latents[model]:
                continue
            v = by_key[(versus, "torch", op, res, batch)]
            latency = v["median_s"] / m["median_s"] if v["median_s"] and m["median_s"] else None
            memory = v["peak_mem_mb"] / m["peak_mem_mb"] if v["peak_mem_mb"] and m["peak_mem_mb"] else None
            ratios.append({"model": model, "backend": backend, "versus": versus, "op": op, "resolution": res,
                           "batch": batch, "latency": latency, "memory": memory})
    return ratios


# ---------------------------------------------------------------- report

def format_table(results: dict) -> str:
    """One row per measurement: params and MACs of the half that runs, latency, memory, and how many times
    faster each student row is than each teacher and than the reference student (the frontier table)."""
    ratios = {(r["model"], r["backend"], r["versus"], r["op"], r["resolution"], r["batch"]): r
              for r in results["ratios"]}
    teachers = [name for name, info in results["models"].items() if info["role"] == "teacher"]
    versus = [*teachers, results["reference"]]
    first = teachers[0] if teachers else results["reference"]
    rows = []
    order = {name: i for i, name in enumerate(results["models"])}
    for m in sorted(results["measurements"], key=lambda m: (m["resolution"], m["batch"], OPS.index(m["op"]),
                                                            order[m["model"]], m["backend"] != "torch")):
        part = "encoder" if m["op"] == "encode" else "decoder"
        cells = [str(m["resolution"]), str(m["batch"]), m["op"], m["model"], m["backend"],
                 f"{results['models'][m['model']]['params'][part] / 1e6:.3f}", f"{m['macs'] / 1e9:.1f}",
                 fmt(m["median_s"], ".3f"), fmt(m["min_s"], ".3f"), fmt(m["peak_mem_mb"], ".0f")]
        for v in versus:
            r = ratios.get((m["model"], m["backend"], v, m["op"], m["resolution"], m["batch"]))
            cells.append("" if r is None else fmt(r["latency"], ".1f") + "x")
        r = ratios.get((m["model"], m["backend"], first, m["op"], m["resolution"], m["batch"]))
        cells.append("" if r is None else fmt(r["memory"], ".1f") + "x")
        rows.append(cells)
    header = ["px", "batch", "op", "model", "backend", "params M", "GMACs", "median s", "min s", "peak MB",
              *[f"x faster than {v}" for v in versus], f"memory / {first}"]
    return markdown_table(header, rows)


def format_cost(results: dict) -> str:
    """Where each student's MACs go: per stage (output width), for the encoder and the decoder."""
    rows = []
    for name, parts in results["cost"].items():
        for part, levels in parts.items():
            total = sum(levels.values())
            cells = ", ".join(f"{px} px {macs / 1e9:.1f} ({macs / total:.0%})" for px, macs in levels.items())
            rows.append([name, part, f"{total / 1e9:.1f}", cells])
    return markdown_table(["student", "half", "GMACs", "GMACs by stage output width (share)"], rows)


def describe(results: dict) -> str:
    """The lines that say what was measured on what, printed above the table."""
    env, models = results["environment"], results["models"]
    backends = " and ".join(f"onnxruntime {env['onnxruntime']}" if b == "onnxruntime" else f"torch {env['torch']}"
                            for b in env.get("backends", ["torch"]))
    lines = [f"{env['device']} ({env['device_name']}), {env['dtype']}, {env['threads']} threads, {backends}; "
             f"median (and min) of {env['repeats']} after {env['warmup']} warm-up, models taking turns; "
             "'x faster' = the other model's median time / this row's. MACs counted with "
             "torch.utils.flop_counter (convolutions, matmuls, attention)."]
    for name, info in models.items():
        p = info["params"]
        weights = " - random weights: speed only, no quality" if info["random_weights"] else ""
        space = f", latents {info['latent_space']}" if "latent_space" in info else ""
        lines.append(f"{name}: {info['label']}, {p['encoder'] / 1e6:.2f}M encoder + {p['decoder'] / 1e6:.2f}M decoder "
                     f"params{space}{weights}")
    methods = sorted({m["memory_method"] for m in results["measurements"] if m["peak_mem_mb"] is not None})
    lines.append(f"Peak memory: {', '.join(methods)} during the first call, in MB.")
    return "\n".join(lines)


def plot_latency(results: dict, path: str | Path) -> Path:
    """Latency vs resolution (log scale), encode and decode side by side, one line per model, backend and batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, op in zip(axes, OPS):
        series: dict[tuple[str, str, int], list[tuple[int, float]]] = {}
        for m in results["measurements"]:
            if m["op"] == op and m["median_s"] is not None:
                series.setdefault((m["model"], m["backend"], m["batch"]), []).append((m["resolution"], m["median_s"]))
        for (model, backend, batch), points in series.items():
            xs, ys = zip(*sorted(points))
            info = results["models"][model]
            label = (info["label"] + ("" if backend == "torch" else f", {backend}")
                     + (f", batch {batch}" if batch != 1 else ""))
            ax.plot(xs, ys, marker="o", linestyle="-" if info["role"] == "student" else "--", label=label)
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


def plot_frontier(results: dict, path: str | Path, resolution: int | None = None) -> Path:
    """Latency against MACs at one resolution (default: the largest), one point per model and backend,
    encode and decode side by side, teachers as dashed lines: the speed side of the size frontier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    resolution = resolution or max(m["resolution"] for m in results["measurements"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
    markers = {"torch": "o", "onnxruntime": "s"}
    for ax, op in zip(axes, OPS):
        rows = [m for m in results["measurements"] if m["op"] == op and m["resolution"] == resolution
                and m["batch"] == 1 and m["median_s"] is not None]
        for m in rows:
            if results["models"][m["model"]]["role"] == "teacher":
                ax.axhline(m["median_s"], linestyle="--", color="grey")
                ax.annotate(f"{m['model']} ({m['macs'] / 1e9:,.0f} GMACs)", (0.02, m["median_s"]),
                            xycoords=("axes fraction", "data"), va="bottom", fontsize=7)
                continue
            ax.scatter(m["macs"] / 1e9, m["median_s"], marker=markers[m["backend"]],
                       color="C0" if m["backend"] == "torch" else "C1")
            ax.annotate(m["model"], (m["macs"] / 1e9, m["median_s"]), textcoords="offset points", xytext=(4, 3),
                        fontsize=7)
        for backend, marker in markers.items():
            if any(m["backend"] == backend for m in rows):
                ax.scatter([], [], marker=marker, color="C0" if backend == "torch" else "C1", label=backend)
        ax.set(title=f"{op}, {resolution} px, batch 1", xlabel="GMACs", ylabel="median latency (s)", xscale="log",
               yscale="log")
        for axis in (ax.xaxis, ax.yaxis):  # plain numbers; minor ticks labelled at 2x and 5x only
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    env = results["environment"]
    fig.suptitle(f"{env['device_name']}, {env['dtype']}, {env['threads']} threads", fontsize=9)
    path = Path(path)
    atomic_file(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def write_report(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """bench.json, bench.md (description, tables), bench.png and frontier.png in out_dir, each replaced atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "bench.json", "md": out_dir / "bench.md", "plot": out_dir / "bench.png",
             "frontier": out_dir / "frontier.png"}
    text = json.dumps(results, indent=2) + "\n"
    atomic_file(paths["json"], lambda tmp: Path(tmp).write_text(text))
    md = (f"# Benchmark\n\n{describe(results)}\n\n{format_table(results)}\n\n"
          f"Where the students' MACs go ({max(m['resolution'] for m in results['measurements'])} px):\n\n"
          f"{format_cost(results)}\n\n![latency vs resolution](bench.png)\n\n![latency vs MACs](frontier.png)\n")
    atomic_file(paths["md"], lambda tmp: Path(tmp).write_text(md))
    plot_latency(results, paths["plot"])
    plot_frontier(results, paths["frontier"])
    return paths
