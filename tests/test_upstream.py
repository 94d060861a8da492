"""The published TAESD-family files load into tinyae's variants and compute what upstream taesd.py computes.

The references were computed by madebyollin/taesd's taesd.py on the same files
(tests/data/taesd-reference/README.md). Upstream works in [0, 1]; tinyae in [-1, 1].
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_pipelines import dc_ae

from tinyae.config import StudentConfig, load_recipe
from tinyae.errors import ExportError
from tinyae.models.formats import load_student
from tinyae.models.student import Student
from tinyae.models.teacher import load_teacher
from tinyae.models.variants import resolve_arch
from tinyae.shipping.export import export_taesd
from tinyae.training.step import build_student
from tinyae.utils.weights import read_weights

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = ROOT / "weights" / "taesd-upstream"
REF = load_file(ROOT / "tests" / "data" / "taesd-reference" / "outputs.safetensors")


@pytest.fixture(scope="module")
def taef2() -> Student:
    return load_student(UPSTREAM / "taef2_encoder.pth", family="flux2").eval()


def test_the_taef2_pair_reads_as_the_flux_2_variant(taef2):
    assert taef2.arch == resolve_arch(StudentConfig(variant="flux_2", latent_channels=32))


@torch.no_grad()
def test_taef2_matches_upstream_within_1e_5(taef2):
    image = REF["image64"]
    latents = taef2.encode(image * 2 - 1)
    assert (latents - REF["taef2_encoder(image64)"]).abs().max() < 1e-5
    for name, z in (("taef2_decoder(taef2_encoder(image64))", REF["taef2_encoder(image64)"]),
                    ("taef2_decoder(latent_noise)", REF["latent_noise"])):
        assert ((taef2.decode(z) + 1) / 2 - REF[name]).abs().max() < 1e-5, name


@torch.no_grad()
def test_the_taesana_encoder_loads_into_the_f32_variant_and_matches_upstream():
    student = load_student(UPSTREAM / "taesana_encoder.pth", encoder_only=True).eval()  # published without decoder
    assert student.arch == resolve_arch(StudentConfig(variant="f32", latent_channels=32))
    latents = student.encode(REF["image128"] * 2 - 1)
    assert latents.shape == (1, 32, 4, 4)
    assert (latents - REF["taesana_encoder(image128)"]).abs().max() < 1e-5


def test_an_encoder_alone_is_refused_where_a_decoder_is_needed():
    with pytest.raises(ExportError, match="No taesana_decoder.safetensors or .pth"):
        load_student(UPSTREAM / "taesana_encoder.pth")


def test_a_sana_student_exports_to_the_taesana_layout_and_loads_back_exactly(tmp_path):
    torch.manual_seed(0)
    student = Student(resolve_arch(StudentConfig(variant="f32", latent_channels=32)))
    student.encoder.load_state_dict(load_student(UPSTREAM / "taesana_encoder.pth", encoder_only=True).encoder.state_dict())
    paths = export_taesd(student, tmp_path, "sana")
    assert sorted(p.name for p in paths) == ["taesana_decoder.pth", "taesana_decoder.safetensors",
                                             "taesana_encoder.pth", "taesana_encoder.safetensors"]
    original = read_weights(UPSTREAM / "taesana_encoder.pth")
    written = torch.load(tmp_path / "taesana_encoder.pth", weights_only=True)
    assert written.keys() == original.keys() and all(torch.equal(written[k], original[k].float()) for k in original)
    decoder = torch.load(tmp_path / "taesana_decoder.pth", weights_only=True)
    # Upstream's F32Decoder: 0 Clamp, 1 conv(32, 256), 2 ReLU, 3-5 blocks at 256, then (upsample, conv, blocks)
    # five times with widths 128, 64, 64, 64, 64 (one block last), and 29 conv(64, 3).
    assert decoder["1.weight"].shape == (256, 32, 3, 3) and decoder["7.weight"].shape == (128, 256, 3, 3)
    assert decoder["29.weight"].shape == (3, 64, 3, 3) and max(int(k.split(".")[0]) for k in decoder) == 29
    again = load_student(tmp_path, family="sana")
    assert again.arch == student.arch
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), student.state_dict().values()))


def test_a_sana_student_can_start_from_the_published_encoder(tmp_path):
    """--student.init taesana_encoder.pth: the encoder is upstream's (its last conv mapped into this teacher's
    latent space), the decoder new (f32 layout)."""
    dc_ae().save_pretrained(tmp_path / "dcae")
    recipe = load_recipe("smoke", {"teacher": {"name": str(tmp_path / "dcae")},
                                   "student": {"init": str(UPSTREAM / "taesana_encoder.pth")},
                                   "data": {"resolution": 64, "final_resolution": 128}})
    student = build_student(recipe, load_teacher(recipe.teacher))
    assert student.arch == resolve_arch(StudentConfig(variant="f32", latent_channels=32))
    original = read_weights(UPSTREAM / "taesana_encoder.pth")
    last = f"{len(student.encoder.layers) - 1}."
    assert all(torch.equal(student.encoder.layers.state_dict()[k], original[k].float()) for k in original
               if not k.startswith(last))


def test_a_flux2_student_exports_back_to_a_taef2_pair_that_reads_the_same(taef2, tmp_path):
    paths = export_taesd(taef2, tmp_path, "flux2")
    assert sorted(p.name for p in paths) == ["taef2_decoder.pth", "taef2_decoder.safetensors",
                                             "taef2_encoder.pth", "taef2_encoder.safetensors"]
    original = read_weights(UPSTREAM / "taef2_decoder.pth")
    written = torch.load(tmp_path / "taef2_decoder.pth", weights_only=True)
    assert written.keys() == original.keys()  # key for key what ComfyUI's TAESD(flux_2) loads
    assert all(torch.equal(written[k], original[k].float()) for k in original)
    again = load_student(tmp_path, family="flux2")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), taef2.state_dict().values()))
