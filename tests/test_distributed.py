"""Real processes: two accelerate ranks train in lockstep, and a SIGKILLed run resumes where it left off.

These spawn `scripts/distill.py` with the smoke recipe shrunk to a few steps of a tiny
student on 32 px crops, and the small test VAE as teacher.
"""

import json
import os
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

ROOT = Path(__file__).resolve().parent.parent
DISTILL = ROOT / "scripts" / "distill.py"

# Records what each rank ended with, then runs scripts/distill.py unchanged (test instrumentation).
RANK_PROBE = textwrap.dedent('''
    import json, runpy, sys
    import accelerate
    from safetensors.torch import save_file
    import tinyae.training.loop

    probe_dir, script = sys.argv[1], sys.argv[2]
    seen, real_loader, real_end = [], tinyae.training.loop.make_train_loader, accelerate.Accelerator.end_training

    def recording_loader(*args, **kwargs):
        for batch in real_loader(*args, **kwargs):
            seen.append(float(batch["images"].double().sum()))
            yield batch

    def end_training(self):
        student = self.unwrap_model(self._models[0]).student
        rank = self.process_index
        save_file({k: v.contiguous() for k, v in student.state_dict().items()}, f"{probe_dir}/rank{rank}.safetensors")
        adam_steps = sorted({int(s["step"]) for s in self._optimizers[0].optimizer.state.values()})
        lr = self._optimizers[0].optimizer.param_groups[0]["lr"]
        with open(f"{probe_dir}/rank{rank}.json", "w") as f:
            json.dump({"rank": rank, "world_size": self.num_processes, "adam_steps": adam_steps, "batches": seen,
                       "lr": lr}, f)
        real_end(self)

    tinyae.training.loop.make_train_loader = recording_loader
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


@pytest.mark.slow
def test_two_ranks_step_together_stay_identical_and_write_one_export(teacher_dir, photos, tmp_path):
    probe, out = tmp_path / "probe", tmp_path / "run"
    probe.mkdir()
    (tmp_path / "probe.py").write_text(RANK_PROBE)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port())]
    # The README's launch line, with no extra environment: without a GPU, distill() must ask accelerate for
    # CPU distribution itself, or each process would train alone (world size 1), which the probe would catch.
    cmd = launch + [str(tmp_path / "probe.py"), str(probe), str(DISTILL)] + tiny_run(teacher_dir, photos, out, 6, 3)
    cmd += ["--optim.warmup_steps", "12"]
    done = subprocess.run(cmd, env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
    assert all(r["adam_steps"] == [6] and len(r["batches"]) == 6 for r in ranks)  # both ranks took every step
    # A warm-up counts optimizer steps, not steps times processes: 6 of 12 done, lr = 3e-4 * (6 + 1) / 12.
    assert all(r["lr"] == pytest.approx(3e-4 * 7 / 12) for r in ranks)
    assert not set(ranks[0]["batches"]) & set(ranks[1]["batches"])  # on different crops
    weights = [load_file(probe / f"rank{r}.safetensors") for r in (0, 1)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])

    # One process wrote the checkpoints, the export and the reports.
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "eval", "metrics.json", "recipe.json",
                                                     "run.json", "samples", "student"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-6"]
    assert sorted(p.name for p in (out / "student").iterdir()) == ["config.json",
                                                                  "diffusion_pytorch_model.safetensors"]
    assert {p.name for p in (out / "checkpoints" / "checkpoint-6").glob("random_states_*")} == {
        "random_states_0.pkl", "random_states_1.pkl"}
    assert done.stdout.count("Student written to") + done.stderr.count("Student written to") == 1
    assert json.loads((out / "metrics.json").read_text())["steps"] == 6


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
