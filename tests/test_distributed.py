"""Real processes: two accelerate ranks train in lockstep, log their mean, resume exactly in two ranks and
across world sizes; the launcher's precision is the one used; a SIGKILLed run resumes where it left off.

These spawn `scripts/distill.py` with the smoke recipe shrunk to a few steps of a tiny
student on 32 px crops, and the small test VAE as teacher.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import small_vae
from safetensors.torch import load_file

from tinyae.training.checkpoints import read_training_state

ROOT = Path(__file__).resolve().parent.parent
DISTILL = ROOT / "scripts" / "distill.py"

# Records what each rank trained on, added up and logged, and ended with; then runs scripts/distill.py unchanged
# (test instrumentation).
RANK_PROBE = textwrap.dedent('''
    import json, runpy, sys
    import accelerate
    from safetensors.torch import save_file
    import tinyae.training.loop

    probe_dir, script = sys.argv[1], sys.argv[2]
    seen, real_loader, real_end = [], tinyae.training.loop.make_train_loader, accelerate.Accelerator.end_training
    added, logged = [], []
    real_add, real_log = tinyae.training.loop.RunningMeans.add, accelerate.Accelerator.log

    def recording_loader(*args, **kwargs):
        for batch in real_loader(*args, **kwargs):
            seen.append(float(batch["images"].double().sum()))
            yield batch

    def recording_add(self, terms):
        added.append({k: float(v) for k, v in terms.items()})
        real_add(self, terms)

    def recording_log(self, values, step=None, **kwargs):
        logged.append({"step": step, **values})
        return real_log(self, values, step=step, **kwargs)

    def end_training(self):
        student = self.unwrap_model(self._models[0]).student
        rank = self.process_index
        save_file({k: v.contiguous() for k, v in student.state_dict().items()}, f"{probe_dir}/rank{rank}.safetensors")
        adam_steps = sorted({int(s["step"]) for s in self._optimizers[0].optimizer.state.values()})
        lr = self._optimizers[0].optimizer.param_groups[0]["lr"]
        with open(f"{probe_dir}/rank{rank}.json", "w") as f:
            json.dump({"rank": rank, "world_size": self.num_processes, "adam_steps": adam_steps, "batches": seen,
                       "lr": lr, "added": added, "logged": logged, "precision": self.mixed_precision}, f)
        real_end(self)

    tinyae.training.loop.make_train_loader = recording_loader
    tinyae.training.loop.RunningMeans.add = recording_add
    accelerate.Accelerator.log = recording_log
    accelerate.Accelerator.end_training = end_training
    sys.argv = [script] + sys.argv[3:]
    runpy.run_path(script, run_name="__main__")
''')


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "vae"
    small_vae().save_pretrained(path)
    return path


def tiny_run(teacher_dir, photos, output, steps, checkpoint_every):
    return ["--recipe", "smoke", "--teacher", str(teacher_dir), "--data", str(photos), "--output", str(output),
            "--student.encoder_widths", "[8]", "--student.decoder_widths", "[8]", "--data.resolution", "32",
            "--data.final_steps", "0", "--data.final_resolution", "null", "--data.holdout", "2",
            "--loss.lpips_weight", "0", "--train.steps", str(steps), "--train.batch_size", "4",
            "--train.checkpoint_every", str(checkpoint_every), "--train.sample_every", "1000",
            "--train.log_with", "null"]


def environment(**extra):
    # One thread per process: on a busy 2-core machine OpenMP threads spin against each other.
    return os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"} | extra


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(num_processes: int, *args: str, precision: str = "no") -> list[str]:
    """`accelerate launch` as a user types it: --multi_gpu for two real gloo ranks (--cpu would start one)."""
    multi = ["--multi_gpu"] if num_processes > 1 else []
    return [sys.executable, "-m", "accelerate.commands.launch", *multi, "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", precision, "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), *args]


# The adversary with a replay buffer: state each rank owns, which an exact resume must give back to that rank.
ADVERSARY = ["--loss.adv_weight", "0.1", "--loss.adv_start", "0", "--loss.adv_loss", "relativistic",
             "--loss.replay", "4", "--loss.disc_width", "8", "--train.log_every", "2"]


def two_rank_args(teacher_dir, photos, out):
    return tiny_run(teacher_dir, photos, out, 4, 2) + ADVERSARY + ["--optim.warmup_steps", "8"]


@pytest.fixture(scope="module")
def two_ranks(teacher_dir, photos, tmp_path_factory):
    """A 4-step run of two gloo ranks (checkpoints at 2 and 4), with what each rank saw, logged and ended with."""
    root = tmp_path_factory.mktemp("two-ranks")
    probe, out = root / "probe", root / "run"
    probe.mkdir()
    (root / "probe.py").write_text(RANK_PROBE)
    # The README's launch line, with no extra environment: without a GPU, distill() must ask accelerate for
    # CPU distribution itself, or each process would train alone (world size 1), which the probe would catch.
    cmd = launch(2, str(root / "probe.py"), str(probe), str(DISTILL), *two_rank_args(teacher_dir, photos, out))
    done = subprocess.run(cmd, env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    return out, probe, ranks, done.stdout + done.stderr


@pytest.mark.slow
def test_two_ranks_step_together_stay_identical_and_write_one_export(two_ranks):
    out, probe, ranks, output = two_ranks
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
    assert all(r["adam_steps"] == [4] and len(r["batches"]) == 4 for r in ranks)  # both ranks took every step
    # A warm-up counts optimizer steps, not steps times processes: 4 of 8 done, lr = 3e-4 * (4 + 1) / 8.
    assert all(r["lr"] == pytest.approx(3e-4 * 5 / 8) for r in ranks)
    assert not set(ranks[0]["batches"]) & set(ranks[1]["batches"])  # on different crops
    weights = [load_file(probe / f"rank{r}.safetensors") for r in (0, 1)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])

    # One process wrote the checkpoints, the export and the reports.
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "eval", "metrics.json", "recipe.json",
                                                     "run.json", "samples", "student"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert sorted(p.name for p in (out / "student").iterdir()) == ["config.json",
                                                                  "diffusion_pytorch_model.safetensors"]
    assert {p.name for p in (out / "checkpoints" / "checkpoint-4").glob("random_states_*")} == {
        "random_states_0.pkl", "random_states_1.pkl"}
    assert output.count("Student written to") == 1
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4


@pytest.mark.slow
def test_the_global_batch_of_all_processes_is_printed_and_recorded(two_ranks):
    out, _, _, output = two_ranks
    run = json.loads((out / "run.json").read_text())
    assert run["batch"] == {"per_process": 4, "processes": 2, "grad_accum": 1, "global": 8}
    assert "Global batch 8 images per optimizer step (4 per process x 2 processes x 1 accumulation step); " \
           "learning rate 0.0003 as set, not scaled with the batch." in output
    assert json.loads((out / "checkpoints" / "checkpoint-4" / "tinyae.json").read_text())["processes"] == 2


@pytest.mark.slow
def test_logged_losses_are_the_mean_over_all_processes_not_the_main_ones(two_ranks):
    _, _, ranks, _ = two_ranks
    for logged in ranks[0]["logged"]:  # at steps 2 and 4, each the mean of that interval's two steps
        step = logged["step"]
        for term in ("pixel", "latent", "adv", "disc"):
            per_rank = [sum(a[term] for a in r["added"][step - 2:step]) / 2 for r in ranks]
            assert per_rank[0] != pytest.approx(per_rank[1], rel=1e-4)  # the ranks saw different crops
            assert logged[f"loss/{term}"] == pytest.approx(sum(per_rank) / 2, rel=1e-5), (step, term)
    assert ranks[1]["logged"] == ranks[0]["logged"]  # every rank holds the same means


@pytest.mark.slow
def test_each_rank_saves_and_gets_back_its_own_replay_buffer_so_a_two_rank_resume_is_exact(two_ranks, teacher_dir,
                                                                                             photos, tmp_path):
    straight = two_ranks[0]
    checkpoint = straight / "checkpoints" / "checkpoint-4"
    buffers = [read_training_state(checkpoint, f"rank_state_{r}.safetensors")["adversary"]["buffer"]["images"]
               for r in (0, 1)]
    assert not torch.equal(buffers[0], buffers[1])  # each rank's own fakes
    assert "adversary" not in read_training_state(checkpoint)  # not rank 0's copy for everyone

    crashed = shutil.copytree(straight, tmp_path / "run")
    for lost in ("checkpoints/checkpoint-4", "student", "eval", "samples", "metrics.json", "run.json"):
        shutil.rmtree(crashed / lost) if (crashed / lost).is_dir() else (crashed / lost).unlink()
    cmd = launch(2, str(DISTILL), *two_rank_args(teacher_dir, photos, crashed), "--resume", "latest")
    done = subprocess.run(cmd, env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ours = load_file(crashed / "student" / "diffusion_pytorch_model.safetensors")
    theirs = load_file(straight / "student" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


@pytest.mark.slow
def test_a_checkpoint_resumes_with_another_number_of_processes_both_ways_and_says_it_is_not_exact(
        two_ranks, teacher_dir, photos, tmp_path):
    run = shutil.copytree(two_ranks[0], tmp_path / "run")
    args = two_rank_args(teacher_dir, photos, run) + ["--resume", "latest"]
    # 2 -> 1: checkpoint-4 of two ranks, continued by one process to step 6 ...
    done = subprocess.run([sys.executable, str(DISTILL), *args, "--train.steps", "6"], env=environment(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "It was written by 2 processes and this run has 1: " in done.stdout + done.stderr
    assert json.loads((run / "run.json").read_text())["batch"]["processes"] == 1
    # ... and 1 -> 2: its checkpoint-6, continued by two ranks to step 8.
    done = subprocess.run(launch(2, str(DISTILL), *args, "--train.steps", "8"), env=environment(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "It was written by 1 process and this run has 2: " in done.stdout + done.stderr
    assert "start their replay buffers and generators afresh" in done.stdout + done.stderr
    assert json.loads((run / "metrics.json").read_text())["steps"] == 8


@pytest.mark.slow
def test_the_launchers_bf16_is_the_precision_used_and_recorded(teacher_dir, photos, tmp_path):
    probe, out = tmp_path / "probe", tmp_path / "run"
    probe.mkdir()
    (tmp_path / "probe.py").write_text(RANK_PROBE)
    args = tiny_run(teacher_dir, photos, out, 2, 2)  # the smoke recipe's train.mixed_precision is auto
    done = subprocess.run(launch(1, str(tmp_path / "probe.py"), str(probe), str(DISTILL), *args, precision="bf16"),
                          env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((probe / "rank0.json").read_text())["precision"] == "bf16"  # what accelerate trained in
    assert json.loads((out / "run.json").read_text())["mixed_precision"] == "bf16"
    assert json.loads((out / "recipe.json").read_text())["train"]["mixed_precision"] == "bf16"
    assert "Precision: bf16 (the launcher's)." in done.stdout + done.stderr


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_checkpoint_and_ends_as_if_never_stopped(teacher_dir, photos, tmp_path):
    steps, every = 16, 4
    reference, killed = tmp_path / "reference", tmp_path / "killed"

    def run(out, *extra):
        return [sys.executable, str(DISTILL), *tiny_run(teacher_dir, photos, out, steps, every), *extra]

    done = subprocess.run(run(reference), env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(run(killed), env=environment(), stdout=log, stderr=subprocess.STDOUT)
    first = killed / "checkpoints" / f"checkpoint-{every}"
    deadline = time.monotonic() + 240
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # no cleanup, no atexit: like a lost node
    proc.wait()
    log.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "student").exists(), "the run finished before it could be killed"
    finished = sorted(int(p.name.split("-")[1]) for p in (killed / "checkpoints").glob("checkpoint-*"))
    last = finished[-1]  # the save after it never landed, so at most one interval of work is lost
    assert every <= last < steps

    done = subprocess.run(run(killed, "--resume", "latest"), env=environment(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Resumed from {killed / 'checkpoints' / f'checkpoint-{last}'} at step {last}." in done.stdout + done.stderr
    assert json.loads((killed / "metrics.json").read_text())["steps"] == steps
    ours = load_file(killed / "student" / "diffusion_pytorch_model.safetensors")
    theirs = load_file(reference / "student" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)  # same data, RNG, EMA and optimizer state
