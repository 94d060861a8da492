"""How many CPU threads torch should use when other processes share the machine.

PyTorch starts one OpenMP thread per core and every operator waits at a barrier for all of
them. When another busy process holds a core, one of our threads is descheduled for a
scheduler time slice (milliseconds) while its siblings spin at the barrier, and a training
step made of thousands of small operators slows by an order of magnitude or more (docs/training.md,
"Sharing a CPU"). One thread per *free* core avoids that and costs little on a quiet machine.

`threads: auto` (the recipe default, `--train.threads`) therefore uses: OMP_NUM_THREADS if
it is set (accelerate sets it for multi-process runs); otherwise the CPUs this process may
run on (its affinity) minus those that other processes kept busy over a short sample of
/proc/stat, shared among the local ranks (LOCAL_WORLD_SIZE), and at least one. It chooses once,
when a run starts, and a resume keeps the count the run started with (`keep`): the thread count
sets the order in which CPU kernels sum, so a count that followed the load would make a resumed
run differ from an uninterrupted one in the last bits. `threads: adaptive` re-checks every
`recheck_s` seconds instead, so a run gets its threads back when a competitor ends (faster on a
shared machine, but its weights then depend on the load). `threads: torch` leaves PyTorch's
default; a number fixes it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import torch

from tinyae.errors import ConfigError

logger = logging.getLogger(__name__)

RECHECK_S = 30.0  # how often `auto` looks at the machine again
SAMPLE_S = 0.25  # the first look: long enough to see a busy competitor, short enough not to delay a run


def affinity_cpus() -> int:
    """CPUs this process may run on (its scheduler affinity), which can be fewer than the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _system_busy_s() -> float | None:
    """Seconds all CPUs together spent busy since boot (/proc/stat), or None off Linux."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_busy_s() -> float:
    times = os.times()
    return times.user + times.system


class BusyElsewhere:
    """CPUs kept busy by other processes since the last call: system busy time minus this process's."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), _system_busy_s(), _own_busy_s())

    def sample(self) -> float | None:
        now, system, own = time.monotonic(), _system_busy_s(), _own_busy_s()
        then, system0, own0 = self._last
        self._last = (now, system, own)
        if system is None or system0 is None or now <= then:
            return None
        return max(0.0, (system - system0) - (own - own0)) / (now - then)


def auto_threads(busy_elsewhere: float | None, cpus: int | None = None, ranks: int | None = None) -> int:
    """One thread per CPU that other processes leave free, shared among `ranks` local processes, at least one."""
    cpus = cpus or affinity_cpus()
    ranks = ranks or int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    free = cpus - (busy_elsewhere or 0.0)
    return max(1, min(cpus, math.floor(free / ranks + 0.25)))  # a process busy > 1/4 of a CPU holds it


def parse_threads(value: str | int) -> str | int:
    """'auto', 'adaptive', 'torch' or a positive number of threads (recipes and command lines)."""
    if value in ("auto", "adaptive", "torch"):
        return value
    try:
        threads = int(value)
    except (TypeError, ValueError):
        threads = 0
    if threads < 1 or isinstance(value, bool):
        raise ConfigError(f"train.threads must be auto, adaptive, torch or a positive number of threads, got "
                          f"{value!r}.")
    return threads


class ThreadPolicy:
    """Applies a `threads` setting to torch now, and (for `adaptive`) again whenever `update()` finds the machine
    changed. `keep`: the count an `auto` run started with, which its resume keeps.

    Call `update()` from the thread that runs the model (torch's thread count is per thread); it is a
    clock read except once every `recheck_s` seconds.
    """

    def __init__(self, setting: str | int = "auto", recheck_s: float = RECHECK_S, sample_s: float = SAMPLE_S,
                 keep: int | None = None):
        self.setting = parse_threads(setting)
        self.recheck_s = recheck_s
        self.used: list[int] = []  # every count applied, in order (one, unless adaptive)
        self.kept = self.setting == "auto" and keep is not None
        from_launcher = bool(os.environ.get("OMP_NUM_THREADS")) and not self.kept
        self.adaptive = self.setting == "adaptive" and not from_launcher
        self._from_launcher = self.setting in ("auto", "adaptive") and from_launcher
        self._next = 0.0
        if self.kept:
            self._apply(keep)
        elif self.setting in ("torch", "auto", "adaptive") and (self.setting == "torch" or from_launcher):
            self._apply(torch.get_num_threads())  # torch's default, or OMP_NUM_THREADS already chose
        elif self.setting in ("auto", "adaptive"):
            self._busy = BusyElsewhere()
            time.sleep(sample_s)
            self._apply(auto_threads(self._busy.sample()))
        else:
            self._apply(self.setting)

    def _apply(self, threads: int) -> None:
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        self.threads = threads
        if threads not in self.used:
            self.used.append(threads)
        self._next = time.monotonic() + self.recheck_s

    def update(self) -> int:
        """Re-check the machine if `recheck_s` has passed (adaptive only); returns the threads in use."""
        if self.adaptive and time.monotonic() >= self._next:
            threads = auto_threads(self._busy.sample())
            if threads != self.threads:
                logger.info("CPU threads %d -> %d (other processes now keep %s CPUs busy).", self.threads, threads,
                            "some" if threads < self.threads else "fewer")
            self._apply(threads)
        return self.threads

    def describe(self) -> str:
        if self.kept:
            how = "auto: kept from the run's start, so the resume is exact"
        elif self._from_launcher:
            how = f"{self.setting}: OMP_NUM_THREADS"
        else:
            how = {"auto": "auto: free CPUs at the start", "adaptive": "adaptive: free CPUs, re-checked",
                   "torch": "torch's default"}.get(self.setting, "fixed")
        return f"{self.threads} CPU threads ({how})"
