"""Resuming and re-running into an output folder: nothing finished is replaced, every recipe change is announced.

A module-wide finished run (4 steps, checkpoints at 2 and 4) is copied for each test;
holding out no images keeps the runs to a few seconds (no evaluation at the end).
"""

import dataclasses
import functools
import json
import logging
import re
import shutil

import pytest
import torch
from conftest import small_vae
from safetensors.torch import load_file

from tinyae.config import Recipe, load_recipe
from tinyae.errors import CheckpointError, ConfigError, TinyaeError
from tinyae.training.checkpoints import list_checkpoints, read_training_state
from tinyae.training.loop import distill


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "vae"
    small_vae().save_pretrained(path)
    return path


def recipe(teacher_dir, photos, out, **sections):
    """A 4-step run of a width-8 student on 32 px crops; `sections` override fields, e.g. train={"steps": 6}."""
    overrides = {
        "teacher": {"name": str(teacher_dir)},
        "student": {"encoder_widths": [8], "decoder_widths": [8], "encoder_blocks": [1, 1, 1, 1],
                    "decoder_blocks": [1, 1, 1, 1]},
        "data": {"path": str(photos), "resolution": 32, "final_resolution": None, "final_steps": 0, "holdout": 0},
        "loss": {"lpips_weight": 0.0, "adv_weight": 0.0, "disc_width": 8},
        "train": {"steps": 4, "batch_size": 2, "log_every": 1, "sample_every": 100, "checkpoint_every": 2,
                  "checkpoints_total_limit": 0, "output_dir": str(out), "log_with": None,
                  "threads": 1},  # a pinned count: weights never depend on the machine's load
    }
    for section, fields in sections.items():
        overrides[section] = {**overrides.get(section, {}), **fields}
    return load_recipe("smoke", overrides)


@pytest.fixture(scope="module")
def finished(teacher_dir, photos, tmp_path_factory):
    return distill(recipe(teacher_dir, photos, tmp_path_factory.mktemp("finished") / "run"))


@pytest.fixture
def run(finished, tmp_path):
    """A private copy of the finished run."""
    return shutil.copytree(finished, tmp_path / "run")


def weights(path):
    return load_file(path / "diffusion_pytorch_model.safetensors")


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- case 1: a finished run is never started over


def test_a_finished_run_whose_checkpoints_were_deleted_is_not_overwritten(teacher_dir, photos, run):
    shutil.rmtree(run / "checkpoints")  # to save space
    before, metrics = weights(run / "student"), (run / "metrics.json").read_text()
    with pytest.raises(ConfigError, match="already holds a finished run .*choose another --output"):
        distill(recipe(teacher_dir, photos, run))
    with pytest.raises(ConfigError, match="no checkpoint to resume from"):
        distill(recipe(teacher_dir, photos, run, train={"resume": "latest"}))
    assert same_weights(weights(run / "student"), before) and (run / "metrics.json").read_text() == metrics


def test_a_run_killed_before_its_first_checkpoint_restarts_only_when_asked(teacher_dir, photos, run):
    for name in ("checkpoints", "student", "metrics.json", "run.json"):
        shutil.rmtree(run / name) if (run / name).is_dir() else (run / name).unlink()
    with pytest.raises(ConfigError, match="--resume latest"):  # recipe.json says a run started here
        distill(recipe(teacher_dir, photos, run))
    distill(recipe(teacher_dir, photos, run, train={"resume": "latest"}))  # nothing to lose: starts at step 0
    assert json.loads((run / "run.json").read_text())["steps"] == 4


# ---------------------------------------------------------------- case 2: what a resume may change


def test_every_recipe_field_has_a_resume_rule():
    from tinyae.training.resume import RESUME_RULES, rule_for

    names = [f"{section.name}.{f.name}" for section in dataclasses.fields(Recipe) if section.name != "name"
             for f in dataclasses.fields(getattr(Recipe(), section.name))]
    assert all(rule_for(name) in RESUME_RULES for name in names)
    assert rule_for("train.steps") == "may grow" and rule_for("student.encoder_widths") == "must equal"
    assert rule_for("optim.lr") == "applies to the optimizer" and rule_for("train.ema_decay") == "applies to the EMA"
    assert rule_for("train.log_every") == "may change" and rule_for("train.seed") == "must equal"
    assert rule_for("train.parts") == "must equal" and rule_for("student.init_ridge") == "may change"


def test_a_new_learning_rate_and_batch_size_apply_on_resume_and_are_recorded(teacher_dir, photos, run, caplog):
    changed = recipe(teacher_dir, photos, run, optim={"lr": 1e-4, "disc_lr": 2e-4}, train={
        "steps": 6, "batch_size": 3, "ema_decay": 0.99, "resume": "latest"})
    with caplog.at_level(logging.INFO):
        distill(changed)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Resumed from"))
    assert line == (f"Resumed from {run / 'checkpoints' / 'checkpoint-4'} at step 4. Changed since the checkpoint: "
                    "optim.lr 0.0003 -> 0.0001 (applied to the optimizer), optim.disc_lr 0.0003 -> 0.0002 (applied "
                    "to the optimizer), train.steps 4 -> 6, train.batch_size 2 -> 3, train.ema_decay 0.999 -> 0.99 "
                    "(applied to the EMA).")
    # What ran is what the files say: the optimizer stepped with the new rate, the history lists the change.
    state = torch.load(run / "checkpoints" / "checkpoint-6" / "optimizer.bin", weights_only=True)
    assert [g["lr"] for g in state["param_groups"]] == [1e-4]
    d_state = torch.load(run / "checkpoints" / "checkpoint-6" / "optimizer_1.bin", weights_only=True)
    assert [g["lr"] for g in d_state["param_groups"]] == [2e-4]
    assert read_training_state(run / "checkpoints" / "checkpoint-6")["ema"]["decay"] == 0.99
    resumes = json.loads((run / "run.json").read_text())["resumes"]
    assert resumes == [{"checkpoint": str(run / "checkpoints" / "checkpoint-4"), "step": 4, "changes": {
        "optim.lr": [3e-4, 1e-4], "optim.disc_lr": [3e-4, 2e-4], "train.steps": [4, 6], "train.batch_size": [2, 3],
        "train.ema_decay": [0.999, 0.99]}}]
    assert json.loads((run / "checkpoints" / "checkpoint-6" / "tinyae.json").read_text())["resumes"] == resumes
    assert json.loads((run / "run.json").read_text())["steps"] == 6


def test_an_unchanged_resume_says_so(teacher_dir, photos, run, caplog):
    with caplog.at_level(logging.INFO):
        distill(recipe(teacher_dir, photos, run, train={"resume": str(run / "checkpoints" / "checkpoint-2")}))
    assert f"Resumed from {run / 'checkpoints' / 'checkpoint-2'} at step 2. Same recipe as the checkpoint." in (
        caplog.messages)
    assert json.loads((run / "run.json").read_text())["resumes"] == [
        {"checkpoint": str(run / "checkpoints" / "checkpoint-2"), "step": 2, "changes": {}}]


@pytest.mark.parametrize("section, fields, named", [
    ("student", {"encoder_widths": [16]}, r"student\.encoder_widths \(\[8\] -> \[16\]\)"),
    ("train", {"seed": 1}, r"train\.seed \(0 -> 1\)"),
    ("train", {"parts": "decoder"}, r"train\.parts \('both' -> 'decoder'\)"),
    ("loss", {"disc_width": 16}, r"loss\.disc_width \(8 -> 16\)"),
    ("teacher", {"scaling_factor": 0.3}, r"teacher\.scaling_factor \(None -> 0\.3\)"),
])
def test_a_resume_refuses_changes_that_would_train_another_model(teacher_dir, photos, run, section, fields, named,
                                                                  monkeypatch):
    monkeypatch.setattr("tinyae.training.loop.load_run_teacher", lambda *a, **k: pytest.fail("work began"))
    sections = {"train": {"resume": "latest"}}
    sections[section] = {**sections.get(section, {}), **fields}
    resumed = recipe(teacher_dir, photos, run, **sections)
    with pytest.raises(ConfigError, match=f"Cannot resume .*checkpoint-4' with {named}"):
        distill(resumed)


def test_a_checkpoint_without_a_recipe_still_refuses_another_student_width(teacher_dir, photos, run):
    (run / "checkpoints" / "checkpoint-4" / "tinyae.json").unlink(missing_ok=True)  # as written before checkpoints recorded it
    (run / "recipe.json").unlink()
    with pytest.raises(ConfigError, match="builds a student of another architecture than .*checkpoint-4"):
        distill(recipe(teacher_dir, photos, run, student={"decoder_widths": [16]}, train={"resume": "latest"}))


def test_steps_below_the_checkpoint_are_refused_not_exported_as_the_longer_run(teacher_dir, photos, run):
    with pytest.raises(ConfigError, match="train.steps 3 is below the step of .*checkpoint-4' \\(4\\)"):
        distill(recipe(teacher_dir, photos, run, train={"steps": 3, "resume": "latest"}))


# ---------------------------------------------------------------- case 9: a damaged checkpoint


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one_with_a_warning(teacher_dir, photos, run):
    damaged = run / "checkpoints" / "checkpoint-4" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    previous = run / "checkpoints" / "checkpoint-2"
    with pytest.raises(TinyaeError, match=f"{re.escape(str(damaged))}' is truncated or damaged.*--resume "
                                          f"{re.escape(str(previous))}"):
        distill(recipe(teacher_dir, photos, run, train={"resume": str(damaged.parent)}))
    with pytest.warns(UserWarning, match=f"{re.escape(str(damaged))}' is truncated or damaged.*resuming from "
                                         f"{re.escape(str(previous))}"):
        distill(recipe(teacher_dir, photos, run, train={"resume": "latest"}))
    assert json.loads((run / "run.json").read_text())["resumes"][0]["step"] == 2
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2", "checkpoint-4"]
    assert len(load_file(damaged)) > 0  # written again from step 2 on


def test_checkpoints_are_readable_by_other_users(finished):
    modes = {p.relative_to(finished): p.stat().st_mode & 0o777 for p in (finished / "checkpoints").rglob("*")}
    assert modes and all(mode & 0o044 == 0o044 for mode in modes.values()), modes


# ---------------------------------------------------------------- resuming never runs code


class Payload:
    """Unpickling this creates `marker`: the code a shared checkpoint could carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("name", ["custom_checkpoint_1.pkl", "random_states_0.pkl", "optimizer.bin"])
def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(teacher_dir, photos, run, tmp_path, name):
    marker = tmp_path / "payload-ran"
    torch.save({"step": 4, "state": Payload(marker)}, run / "checkpoints" / "checkpoint-4" / name)
    try:
        with pytest.raises(CheckpointError, match="Cannot resume from .*checkpoint-4'.*code"):
            distill(recipe(teacher_dir, photos, run, train={"steps": 6, "resume": "latest"}))
    finally:
        assert not marker.exists(), "the checkpoint's code ran"


def test_a_refused_resume_names_the_checkpoint_values_to_pass_not_an_override_to_drop(teacher_dir, photos, run,
                                                                                       monkeypatch):
    monkeypatch.setattr("tinyae.training.loop.load_run_teacher", lambda *a, **k: pytest.fail("work began"))
    with pytest.raises(ConfigError) as refusal:  # e.g. another recipe whose teacher differs: nothing overridden
        distill(recipe(teacher_dir, photos, run, teacher={"scaling_factor": 0.3},
                       train={"seed": 1, "resume": "latest"}))
    message = str(refusal.value)
    assert "pass the checkpoint's values (--teacher.scaling_factor null --train.seed 0)" in message, message
    assert "drop the override" not in message


# ---------------------------------------------------------------- train.compile is a switch, not another model


def test_a_resume_across_the_compile_switch_loads_the_same_weights_both_ways(teacher_dir, photos, run, monkeypatch):
    # The eager backend keeps it quick: what could break is the saved keys, not the compiled kernels.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    keys = set(load_file(run / "checkpoints" / "checkpoint-4" / "model.safetensors"))
    distill(recipe(teacher_dir, photos, run, train={"steps": 6, "compile": True, "resume": "latest"}))  # off -> on
    assert set(load_file(run / "checkpoints" / "checkpoint-6" / "model.safetensors")) == keys  # no _orig_mod.
    distill(recipe(teacher_dir, photos, run, train={"steps": 8, "compile": False, "resume": "latest"}))  # on -> off
    history = json.loads((run / "run.json").read_text())["resumes"]
    assert [(r["step"], r["changes"].get("train.compile")) for r in history] == [(4, [False, True]), (6, [True, False])]
    assert json.loads((run / "metrics.json").read_text()) == {"steps": 8, "heldout_images": 0}
