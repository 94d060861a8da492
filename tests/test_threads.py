"""CPU threads: one per CPU that other processes leave free, chosen once and kept on resume (or re-checked when
adaptive), and an explicit setting wins."""

import subprocess
import sys

import pytest
import torch

from tinyae.config import load_recipe
from tinyae.errors import ConfigError
from tinyae.utils import threads
from tinyae.utils.threads import BusyElsewhere, ThreadPolicy, auto_threads, parse_threads


@pytest.fixture(autouse=True)
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("busy, cpus, ranks, expected", [
    (0.0, 2, 1, 2), (0.1, 2, 1, 2), (0.6, 2, 1, 1), (1.0, 2, 1, 1), (2.0, 2, 1, 1), (None, 2, 1, 2),
    (0.0, 8, 2, 4), (3.0, 8, 1, 5), (0.0, 1, 1, 1),
])
def test_auto_takes_the_cpus_other_processes_leave_free(busy, cpus, ranks, expected):
    assert auto_threads(busy, cpus, ranks) == expected


def test_a_busy_process_is_seen_as_busy_elsewhere():
    meter = BusyElsewhere()
    spin = "import time\nend = time.time() + 1.0\nwhile time.time() < end: pass"
    child = subprocess.Popen([sys.executable, "-c", spin])
    child.wait()
    assert meter.sample() > 0.5  # about one CPU for a second (more if the machine is busy anyway)


def test_a_fixed_number_is_applied_and_torch_leaves_the_default():
    ThreadPolicy(1)
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)
    assert ThreadPolicy("torch").threads == 2 and torch.get_num_threads() == 2


def test_auto_follows_omp_num_threads_when_a_launcher_set_it(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(2)
    policy = ThreadPolicy("auto", sample_s=0)
    assert not policy.adaptive and policy.update() == 2 and "OMP_NUM_THREADS" in policy.describe()


def test_adaptive_drops_to_the_free_cpus_and_takes_them_back(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 2)
    busy = iter([1.0, 1.0, 0.0])
    monkeypatch.setattr(BusyElsewhere, "sample", lambda self: next(busy))
    clock = [100.0]  # the policy's clock, moved by the test: the machine's own pace cannot change the outcome
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock[0])
    policy = ThreadPolicy("adaptive", recheck_s=10, sample_s=0)
    assert policy.threads == torch.get_num_threads() == 1  # a competitor holds one of the two CPUs
    clock[0] += 20
    assert policy.update() == 1
    clock[0] += 20
    assert policy.update() == 2 and torch.get_num_threads() == 2  # it ended
    assert policy.update() == 2  # no re-check before recheck_s: `busy` is not read again
    assert policy.used == [1, 2]


def test_auto_chooses_once_so_the_load_never_changes_a_runs_thread_count(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 2)
    busy = iter([1.0, 0.0, 0.0])
    monkeypatch.setattr(BusyElsewhere, "sample", lambda self: next(busy))
    policy = ThreadPolicy("auto", recheck_s=0.0, sample_s=0)
    assert policy.threads == 1 and policy.update() == 1 and policy.update() == 1 and policy.used == [1]


def test_a_resumed_auto_run_keeps_the_count_it_started_with_whatever_the_load(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # even a launcher's setting does not change a resumed run
    monkeypatch.setattr(BusyElsewhere, "sample", lambda self: pytest.fail("the load was sampled"))
    policy = ThreadPolicy("auto", sample_s=0, keep=2)
    assert policy.threads == torch.get_num_threads() == 2 and "kept from the run's start" in policy.describe()
    assert ThreadPolicy(1, keep=2).threads == 1  # an explicit count is a change the user asked for


def test_the_recipe_field_takes_auto_torch_or_a_positive_number():
    assert load_recipe("smoke").train.threads == "auto"
    assert load_recipe("smoke", ["--train.threads", "1"]).train.threads == 1
    assert load_recipe("smoke", ["--train.threads", "torch"]).train.threads == "torch"
    assert load_recipe("smoke", ["--train.threads", "adaptive"]).train.threads == "adaptive"
    with pytest.raises(ConfigError, match="train.threads"):
        load_recipe("smoke", ["--train.threads", "many"])
    with pytest.raises(ConfigError, match="train.threads"):
        load_recipe("smoke", ["--train.threads", "0"])
    with pytest.raises(ConfigError, match="train.threads"):
        parse_threads(-2)
