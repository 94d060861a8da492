"""Every export writes the same bytes as the release that wrote tests/data/export-golden/manifest.json.

Refactors of the students (issue 29: one core for images and video) must not change a byte of
what users load: the TAESD/TAEF2 pairs, the AutoencoderTiny/TinyAutoencoder folders and the
TAEHV files. Weights are set per state-dict key from a seed derived from the key's name, so they
do not depend on the order in which a model creates its layers. ONNX files embed the exporter's
version, so for them the weights (initializer bytes) and the operator sequence are compared.

Regenerate (only when a format change is intended, and say so in the commit):
    python tests/test_export_golden.py
"""

import hashlib
import json
import sys
import zlib
from pathlib import Path

import pytest
import torch

from tinyae.config import StudentConfig
from tinyae.models.student import Student
from tinyae.models.variants import resolve_arch
from tinyae.models.video_student import VideoStudent
from tinyae.shipping.export import export_all, export_diffusers
from tinyae.shipping.taehv import export_taehv

MANIFEST = Path(__file__).parent / "data" / "export-golden" / "manifest.json"

pytestmark = pytest.mark.filterwarnings("ignore:.*layout that ComfyUI, Forge and taesd.py build")


def keyed_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Each tensor from its own generator seeded by its key: independent of layer creation order."""
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
                fan_in = tensor[0].numel() if tensor.ndim > 1 else 100
                tensor.copy_(torch.randn(tensor.shape, generator=g) / fan_in ** 0.5)
    return model


def image_student(family: str) -> Student:
    """The family's published layout (full size: what users load)."""
    channels = {"sd": 4, "flux2": 32, "sana": 32, "qwen-image": 16}[family]
    variant = {"sd": None, "flux2": "flux_2", "sana": "f32", "qwen-image": "taesd"}[family]
    downscale = 32 if family == "sana" else 8
    return keyed_weights(Student(resolve_arch(StudentConfig(variant=variant), channels, downscale, family)))


def small_student() -> Student:
    return keyed_weights(Student(StudentConfig(latent_channels=4, encoder_widths=[16], decoder_widths=[16],
                                               encoder_blocks=[1, 1, 1, 1], decoder_blocks=[1, 1, 1, 1])))


def write_exports(out: Path) -> None:
    for family in ("sd", "flux2", "sana", "qwen-image"):
        export_all(image_student(family), out / family, family, dtype=torch.float16)
    export_diffusers(image_student("sd"), out / "sd-fp32", family="sd")
    for name, dtype in (("taew2_1", "fp16"), ("taew2_2", "fp32")):
        export_taehv(keyed_weights(VideoStudent.published(name)), out / name, name, dtype=dtype)


def onnx_digest(path: Path) -> str:
    import onnx

    model = onnx.load(str(path))
    weights = sorted(hashlib.sha256(onnx.numpy_helper.to_array(t).tobytes()).hexdigest()
                     for t in model.graph.initializer)
    ops = [node.op_type for node in model.graph.node]
    return hashlib.sha256(json.dumps({"weights": weights, "ops": ops}).encode()).hexdigest()


def manifest(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_every_export_writes_the_bytes_of_the_golden_release(tmp_path):
    write_exports(tmp_path)
    expected = json.loads(MANIFEST.read_text())["files"]
    got = manifest(tmp_path)
    assert sorted(got) == sorted(expected)
    changed = [name for name in expected if got[name] != expected[name]]
    assert not changed, f"these exports changed bytes: {changed}"


@pytest.mark.slow
def test_the_onnx_export_keeps_the_golden_weights_and_operators(tmp_path):
    pytest.importorskip("onnxscript")
    from tinyae.shipping.onnx import export_onnx

    export_onnx(small_student(), tmp_path / "onnx")
    expected = json.loads(MANIFEST.read_text())["onnx"]
    assert {name: onnx_digest(tmp_path / "onnx" / name) for name in sorted(expected)} == expected


if __name__ == "__main__":
    import tempfile

    from tinyae.shipping.onnx import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        write_exports(Path(tmp) / "files")
        export_onnx(small_student(), Path(tmp) / "onnx")
        record = {"files": manifest(Path(tmp) / "files"),
                  "onnx": {p.name: onnx_digest(p) for p in sorted((Path(tmp) / "onnx").glob("*.onnx"))}}
    MANIFEST.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {MANIFEST} ({len(record['files'])} files, {len(record['onnx'])} ONNX graphs)", file=sys.stderr)
