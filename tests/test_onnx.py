"""ONNX export: both halves, dynamic batch/height/width, fp32 and fp16, checked against PyTorch in ONNX Runtime."""

import json
import sys
from pathlib import Path

import pytest
import torch

from tinyae.cli import main as tinyae_cli
from tinyae.config import StudentConfig
from tinyae.errors import DependencyError, ExportError
from tinyae.models.formats import load_student
from tinyae.models.student import Student
from tinyae.shipping.export import export_student
from tinyae.shipping.onnx import OnnxStudent, export_onnx, require

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ROOT = Path(__file__).resolve().parent.parent
TAEF2 = ROOT / "weights" / "taesd-upstream" / "taef2_encoder.pth"


def small_student(seed: int = 0, **fields) -> Student:
    torch.manual_seed(seed)
    config = {"latent_channels": 4, "encoder_widths": [16], "decoder_widths": [16], "encoder_blocks": [1, 1, 1, 1],
              "decoder_blocks": [1, 1, 1, 1], **fields}
    return Student(StudentConfig(**config)).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    student = small_student()
    folder = export_onnx(student, tmp_path_factory.mktemp("onnx") / "student-onnx", fp16=True)
    return student, folder


def test_the_folder_holds_both_halves_in_fp32_and_fp16_with_their_architecture(exported):
    student, folder = exported
    assert sorted(p.name for p in folder.iterdir()) == ["decoder.fp16.onnx", "decoder.onnx", "encoder.fp16.onnx",
                                                        "encoder.onnx"]
    onnx = require("onnx")
    model = onnx.load(str(folder / "decoder.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["tinyae.arch"]) == student.arch.to_dict()
    assert meta["tinyae.downscale"] == "8" and meta["tinyae.latent_channels"] == "4"
    (inp,) = model.graph.input
    assert inp.name == "latents"
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 4, "height", "width"]


@pytest.mark.parametrize("shape", [(1, 64, 64), (2, 48, 80)], ids=["square", "batch2-wide"])
def test_fp32_onnx_matches_pytorch_within_1e_4_at_any_size(exported, shape):
    student, folder = exported
    runtime = OnnxStudent(folder)
    batch, height, width = shape
    images = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        latents = student.encode(images)
        assert (runtime.encode(images) - latents).abs().max() < 1e-4
        assert (runtime.decode(latents) - student.decode(latents)).abs().max() < 1e-4


def test_fp16_onnx_runs_on_the_cpu_close_to_pytorch_fp32(exported):
    student, folder = exported
    runtime = OnnxStudent(folder, "fp16")
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        latents = student.encode(images)
        out = runtime.decode(latents)
        assert out.dtype == torch.float16 and runtime.encode(images).dtype == torch.float16
        assert (out.float() - student.decode(latents)).abs().max() < 1e-2


def test_the_real_taef2_pool_layout_exports_and_matches(tmp_path, photos):
    """GroupNorm pool branch, 32 channels, trained weights; fp16 within the tolerance docs/shipping.md states."""
    from tinyae.data.images import list_images, load_eval_images

    taef2 = load_student(TAEF2, family="flux2").eval()
    folder = export_onnx(taef2, tmp_path / "taef2-onnx", fp16=True)
    images = load_eval_images(list_images(photos)[:2], 128)
    with torch.no_grad():
        latents = taef2.encode(images)
        decoded = taef2.decode(latents)
        fp32, fp16 = OnnxStudent(folder), OnnxStudent(folder, "fp16")
        assert (fp32.encode(images) - latents).abs().max() < 1e-4
        assert (fp32.decode(latents) - decoded).abs().max() < 1e-4
        assert (fp16.encode(images).float() - latents).abs().max() < 1e-1
        assert (fp16.decode(latents).float() - decoded).abs().max() < 2e-2


def test_the_export_command_writes_onnx_beside_the_student_without_a_family(tmp_path, capsys):
    small_student().save_pretrained(tmp_path / "student")
    tinyae_cli(["export", "--student", str(tmp_path / "student"), "--to", "onnx"])
    assert sorted(p.name for p in (tmp_path / "student-onnx").iterdir()) == ["decoder.onnx", "encoder.onnx"]
    assert "student-onnx" in capsys.readouterr().out
    with pytest.raises(ExportError, match="already exists"):
        export_student(tmp_path / "student", to="onnx")


def test_a_missing_onnx_package_is_one_sentence_naming_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import now raises ImportError
    with pytest.raises(DependencyError, match=r"need the 'onnxscript' package: pip install 'tinyae\[onnx\]'"):
        export_onnx(small_student(), tmp_path / "o")
    assert not (tmp_path / "o").exists()
    small_student().save_pretrained(tmp_path / "student")
    with pytest.raises(SystemExit) as exit_info:
        tinyae_cli(["export", "--student", str(tmp_path / "student"), "--to", "onnx"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
