"""How a run is launched: the launcher's precision wins or a disagreement is refused, fp16 is refused with a pointer
to bf16, the global batch is stated, and the step runs the fast paths (compiled code, foreach/fused kernels)."""

import functools

import pytest
import torch
from accelerate import Accelerator
from conftest import small_vae

from tinyae.config import load_recipe
from tinyae.errors import ConfigError
from tinyae.models.teacher import Teacher
from tinyae.training.launch import (
    GlobalBatch,
    choose_precision,
    launcher_precision,
    optimizer_flags,
    speed_up_fixed_shapes,
)
from tinyae.training.loop import make_ema
from tinyae.training.step import build_parts, build_student, distill_step


@pytest.mark.parametrize("setting, launcher, used", [
    ("auto", None, "no"), ("auto", "bf16", "bf16"), ("auto", "no", "no"),
    ("bf16", None, "bf16"), ("bf16", "bf16", "bf16"), ("no", "no", "no"),
])
def test_auto_takes_the_launchers_precision_and_an_explicit_one_must_agree(setting, launcher, used):
    assert choose_precision(setting, launcher) == used


def test_a_recipe_precision_that_disagrees_with_the_launcher_is_refused_naming_both():
    with pytest.raises(ConfigError, match="train.mixed_precision is no but the launcher says bf16.*"
                                          "--train.mixed_precision auto.*--mixed_precision no"):
        choose_precision("no", "bf16")


def test_fp16_is_refused_from_the_recipe_and_from_the_launcher_with_a_pointer_to_bf16():
    with pytest.raises(ConfigError, match="fp16 is not supported: one loss scaler.*use bf16"):
        load_recipe("smoke", ["--train.mixed_precision", "fp16"])
    with pytest.raises(ConfigError, match="launch --mixed_precision fp16 is not supported: one loss scaler.*bf16"):
        choose_precision("auto", "fp16")
    with pytest.raises(ConfigError, match="fp8 is not a precision tinyae trains in"):
        choose_precision("auto", "fp8")


def test_the_launcher_precision_is_read_from_accelerates_environment(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert launcher_precision() is None
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "BF16")
    assert launcher_precision() == "bf16"


def test_the_shipped_recipes_take_the_launchers_precision():
    for name in ("base", "sdxl", "flux2", "smoke", "finetune", "study"):
        assert load_recipe(name).train.mixed_precision == "auto", name


def test_the_global_batch_is_per_process_times_processes_times_accumulation():
    batch = GlobalBatch(per_process=16, processes=4, grad_accum=2)
    assert batch.to_dict() == {"per_process": 16, "processes": 4, "grad_accum": 2, "global": 128}
    assert batch.describe(3e-4) == ("Global batch 128 images per optimizer step (16 per process x 4 processes x 2 "
                                    "accumulation steps); learning rate 0.0003 as set, not scaled with the batch.")


def tiny_parts(compile_student: bool = False):
    recipe = load_recipe("smoke", {
        "student": {"encoder_widths": [8], "decoder_widths": [8], "encoder_blocks": [1, 1, 1, 1],
                    "decoder_blocks": [1, 1, 1, 1]},
        "data": {"resolution": 32, "final_resolution": None, "final_steps": 0},
        "loss": {"lpips_weight": 0.0, "adv_weight": 0.1, "disc_width": 8, "replay": 4},
        "train": {"batch_size": 2, "compile": compile_student}})
    teacher = Teacher(small_vae(), scaling_factor=0.5, shift_factor=0.1, name="small")
    student = build_student(recipe, teacher)
    return build_parts(recipe, teacher, student, Accelerator())


def test_both_optimizers_and_the_ema_take_one_kernel_for_all_parameters():
    parts = tiny_parts()
    assert make_ema(parts.student, 0.99).foreach
    assert optimizer_flags(torch.device("cpu")) == {"foreach": True, "fused": None}
    assert optimizer_flags(torch.device("cuda")) == {"fused": True, "foreach": None}
    for opt in (parts.opt, parts.adversary.opt):
        assert all(group["foreach"] is True for group in opt.param_groups)


def test_a_compiled_step_runs_compiled_code_and_keeps_the_students_keys(monkeypatch):
    from torch._dynamo.utils import counters

    # The eager backend keeps the test quick; what is checked is that the step's calls go through dynamo at all.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()
    counters.clear()
    parts = tiny_parts(compile_student=True)
    assert not any("_orig_mod" in key for key in parts.step_model.state_dict())
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    terms = distill_step(parts, {"images": images}, use_adv=True)
    assert counters["stats"]["unique_graphs"] >= 1, dict(counters["stats"])  # compiled frames ran
    assert torch.isfinite(torch.stack(list(terms.values()))).all()


def test_cudnn_picks_its_fastest_kernels_for_the_fixed_crop_shapes_on_cuda_only(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    speed_up_fixed_shapes(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    speed_up_fixed_shapes(torch.device("cuda", 0))  # only sets the flag: runs without a GPU
    assert torch.backends.cudnn.benchmark is True
