"""The latent bridge: a donor's latent-boundary layers refitted nonlinearly carry it into a new latent space."""

import json
import logging
from pathlib import Path

import pytest
import torch

from tinyae.config import load_recipe
from tinyae.errors import ConfigError
from tinyae.data.images import load_eval_images
from tinyae.models.latent_space import IDENTITY
from tinyae.models.teacher import Teacher
from tinyae.models.tiny_autoencoder import TinyAutoencoder
from tinyae.training.loop import distill
from tinyae.training.step import build_student
from tinyae.training.warm_start import load_donor

torch.set_num_threads(1)


def orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, n, generator=generator))[0]


class WarpedAutoencoder(TinyAutoencoder):
    """A TAE whose latents pass through an exactly invertible nonlinear map: y = B asinh(s * (A z) + b).

    Its encoder writes the map of its donor's latents and its decoder is the donor's after the inverse map, so
    it decodes exactly as the donor does, in a space no linear map reaches."""

    def set_warp(self, seed: int) -> "WarpedAutoencoder":
        g = torch.Generator().manual_seed(seed)
        n = self.config.latent_channels
        self.a, self.b = orthogonal(n, g), orthogonal(n, g)
        self.scale = 0.5 + torch.rand(n, generator=g)  # per-channel gains in [0.5, 1.5] before asinh
        self.shift = 0.3 * torch.randn(n, generator=g)
        return self

    def warp(self, z: torch.Tensor) -> torch.Tensor:
        u = torch.einsum("ij,bjhw->bihw", self.a, z) * self.scale.view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1)
        return torch.einsum("ij,bjhw->bihw", self.b, torch.asinh(u))

    def unwarp(self, y: torch.Tensor) -> torch.Tensor:
        u = torch.sinh(torch.einsum("ji,bjhw->bihw", self.b, y))
        return torch.einsum("ji,bjhw->bihw", self.a, (u - self.shift.view(1, -1, 1, 1)) / self.scale.view(1, -1, 1, 1))

    def encode(self, x, return_dict=True):
        out = super().encode(x)
        return type(out)(latents=self.warp(out.latents))

    def decode(self, z, generator=None, return_dict=True):
        return super().decode(self.unwarp(z))


@pytest.fixture(scope="module")
def warped_teacher():
    donor = load_donor("taef2")
    vae = WarpedAutoencoder(**donor.arch.to_dict(), family="flux2")
    vae.load_state_dict(donor.state_dict())
    return Teacher(vae.set_warp(seed=0), name="warped-taef2", family="flux2", latent_space=IDENTITY)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((10 * torch.log10(4 / ((a - b) ** 2).mean((1, 2, 3)))).mean())


def recipe(**student):
    return load_recipe("finetune", {"student": {"init": "taef2", **student}, "data": {"resolution": 64}})


@pytest.fixture(scope="module")
def fold_and_bridge(warped_teacher, photos):
    """The linear fold alone and the fold plus the bridge, fitted on the photos' 96 px crops."""
    fit = load_eval_images(sorted(photos.iterdir()), 96)
    return (build_student(recipe(), warped_teacher, fit),
            build_student(recipe(init_bridge_steps=300), warped_teacher, fit))


def decode_psnr(student, teacher, images):
    with torch.no_grad():
        latents = teacher.encode(images)
        return psnr(student.decode(latents), teacher.decode(latents))


def test_the_warped_teacher_decodes_as_its_donor(warped_teacher, photos):
    images = load_eval_images(sorted(photos.iterdir()), 64)
    with torch.no_grad():
        assert psnr(warped_teacher.decode(warped_teacher.encode(images)), load_donor("taef2")(images)) > 50


def test_the_fitted_bridge_alone_decodes_a_nonlinearly_warped_teachers_latents_better_than_the_linear_fold(
        warped_teacher, fold_and_bridge, photos):
    """Measured: the fold 28.4 dB on the fit's crops and 29.0 dB at 128 px; the bridge 33.2 and 30.8 dB. The issue's
    bar of 35 dB is not reached (docs/warm-start.md): the bridge's fit on 7 crops does not carry to other crops."""
    fold, bridged = fold_and_bridge
    files = sorted(photos.iterdir())
    fit, other = load_eval_images(files, 96), load_eval_images(files, 128)  # the fit's crops, another crop size
    assert decode_psnr(fold, warped_teacher, fit) < 30  # a linear map cannot reach this space
    assert decode_psnr(bridged, warped_teacher, fit) >= decode_psnr(fold, warped_teacher, fit) + 3
    assert decode_psnr(bridged, warped_teacher, other) >= decode_psnr(fold, warped_teacher, other) + 1


def test_the_bridge_is_logged_with_its_fit_each_side(warped_teacher, photos, caplog):
    with caplog.at_level(logging.INFO):
        build_student(recipe(init_bridge_steps=2), warped_teacher, load_eval_images(sorted(photos.iterdir()), 64))
    assert "Latent bridge (2 steps per side" in caplog.text
    assert "decoder.layers.0-4 R²" in caplog.text and "encoder.layers.13-14 R²" in caplog.text


def test_a_run_reports_its_final_evaluation_also_at_the_size_users_decode_at(tmp_path):
    out = distill(load_recipe("smoke", {
        "data": {"resolution": 64, "final_resolution": None, "final_steps": 0, "holdout": 2, "eval_resolution": 128},
        "loss": {"adv_weight": 0.0},
        "train": {"steps": 2, "batch_size": 2, "output_dir": str(tmp_path / "run"), "log_with": None, "threads": 1}}))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resolution"] == 64 and metrics["at_128px"]["resolution"] == 128
    assert metrics["at_128px"]["n_images"] == 2 and metrics["at_128px"]["psnr_vs_teacher"] > 0
    assert {p.name for p in (out / "eval").glob("grid_*.png")} == {"grid_64px.png", "grid_128px.png"}


def test_bridge_steps_below_zero_are_refused_at_start():
    with pytest.raises(ConfigError, match="init_bridge_steps"):
        load_recipe("finetune", {"student": {"init_bridge_steps": -1}})


def test_the_newspace_recipe_bridges_trains_both_halves_and_closes_at_256_px():
    newspace = load_recipe(str(Path(__file__).resolve().parent.parent / "recipes" / "newspace.yaml"))
    assert newspace.student.init_bridge_steps > 0 and newspace.train.parts == "both"
    assert newspace.data.final_resolution == 256 and newspace.data.eval_resolution == 512
