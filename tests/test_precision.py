"""fp16/bf16 safety: the largest activation and where, outputs per dtype, and a student that overflows fp16."""

import copy
import json
import warnings

import pytest
import torch
from torch import nn

from tinyae.config import StudentConfig
from tinyae.evaluation.evaluate import evaluate, summary, write_report
from tinyae.models.precision import FP16_MAX, fp16_overflow, low_precision_outputs, warn_if_fp16_overflows
from tinyae.models.student import Student
from tinyae.shipping.export import export_student
from tinyae.utils.weights import cast_state


def small_student(seed: int = 0) -> Student:
    torch.manual_seed(seed)
    return Student(StudentConfig(latent_channels=4, encoder_widths=[16], decoder_widths=[16],
                                 encoder_blocks=[1, 1, 1, 1], decoder_blocks=[1, 1, 1, 1])).eval()


def overflowing_student() -> Student:
    """Every conv weight x6: the weights still fit fp16 easily, the activations grow past 65504."""
    student = small_student()
    with torch.no_grad():
        for module in student.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.mul_(6)
    return student


def images(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_cpu_emulation_of_fp16_agrees_with_native_fp16():
    student, x = small_student(), images(1, 16)
    out = low_precision_outputs(student, x)
    native = copy.deepcopy(student).half()  # reference kernels: slow, fine at 16 px
    with torch.no_grad():
        for part, inp in (("encoder", x), ("decoder", out["encoder"]["fp32"])):
            emulated, fp32 = out[part]["fp16"], out[part]["fp32"]
            assert (emulated - getattr(native, part)(inp.half()).float()).abs().max() < 2e-3
            assert 0 < (emulated - fp32).abs().max() < 2e-3


def test_a_normal_student_fits_fp16_and_bf16_is_coarser():
    out = low_precision_outputs(small_student(), images())
    assert fp16_overflow(out) is None
    for part in ("encoder", "decoder"):
        peak = out[part]["peak"]
        assert 0 < peak.value < FP16_MAX and peak.where.startswith(f"{part}.layers.")
        fp16_error = (out[part]["fp16"] - out[part]["fp32"]).abs().max()
        bf16_error = (out[part]["bf16"] - out[part]["fp32"]).abs().max()
        assert bf16_error > fp16_error  # 8 mantissa bits against 11


def test_a_student_whose_weights_fit_fp16_can_still_overflow_it():
    student = overflowing_student()
    cast_state(student.state_dict(), torch.float16)  # the weight check passes: nothing overflows there
    out = low_precision_outputs(student, images())
    message = fp16_overflow(out)
    assert message is not None and "encoder.layers." in message and "65504" in message
    assert out["encoder"]["peak"].value > FP16_MAX
    assert not torch.isfinite(out["encoder"]["fp16"]).all()
    assert torch.isfinite(out["encoder"]["bf16"]).all()  # bf16 has fp32's range


def test_fp16_exports_warn_about_activation_overflow_and_fp32_ones_do_not(tmp_path):
    overflowing_student().save_pretrained(tmp_path / "bad")
    with pytest.warns(UserWarning, match="fp16 overflow: the student's encoder reaches"):
        export_student(tmp_path / "bad", to="diffusers", dtype="fp16")
    assert (tmp_path / "bad-diffusers" / "diffusion_pytorch_model.fp16.safetensors").is_file()  # warned, not refused
    assert warn_if_fp16_overflows(small_student()) is None  # on the sample photos
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_student(tmp_path / "bad", to="diffusers", out=tmp_path / "fp32")  # fp32: nothing to check


def test_evaluation_reports_the_worst_activation_and_the_overflow(small_teacher, tmp_path):
    x = images(3, 32)
    good = evaluate(small_student(), small_teacher, x, batch_size=2)["resolutions"]["32"]["precision"]
    assert good["fp16_overflow"] is None and good["fp16_headroom"] > 1
    assert good["decoder"]["fp16"]["psnr_vs_fp32"] > good["decoder"]["bf16"]["psnr_vs_fp32"] > 30
    assert good["decoder"]["fp16"]["nonfinite"] == 0

    results = evaluate(overflowing_student(), small_teacher, x, batch_size=2)
    bad = results["resolutions"]["32"]["precision"]
    assert "encoder" in bad["fp16_overflow"] and bad["fp16_headroom"] < 1
    assert bad["encoder"]["fp16"]["nonfinite"] > 0 and bad["encoder"]["bf16"]["nonfinite"] == 0
    flat = summary(results)
    assert flat["fp16_overflow"] is True and flat["max_activation"] > FP16_MAX
    paths = write_report(results, tmp_path)
    assert "**Warning: fp16 overflow at 32 px" in paths["md"].read_text()
    assert "max |activation| (fp32)" in paths["md"].read_text()
    saved = json.loads(paths["json"].read_text())["resolutions"]["32"]["precision"]
    assert saved["encoder"]["where"].startswith("encoder.layers.")
