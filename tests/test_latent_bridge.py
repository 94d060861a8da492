"""The latent bridge: a donor's latent-boundary layers refitted nonlinearly carry it into a new latent space."""

import logging

import pytest
import torch

from tinyae.config import load_recipe
from tinyae.data.images import load_eval_images
from tinyae.models.latent_space import IDENTITY
from tinyae.models.teacher import Teacher
from tinyae.models.tiny_autoencoder import TinyAutoencoder
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


def test_the_warped_teacher_decodes_as_its_donor_and_no_linear_map_reaches_its_space(warped_teacher, photos):
    images = load_eval_images(sorted(photos.iterdir()), 64)
    donor = load_donor("taef2")
    with torch.no_grad():
        assert psnr(warped_teacher.decode(warped_teacher.encode(images)), donor(images)) > 50
        student = build_student(recipe(), warped_teacher, images)  # the linear fold alone
        fold = psnr(student.decode(warped_teacher.encode(images)), warped_teacher.decode(warped_teacher.encode(images)))
    assert fold < 30


def test_the_fitted_bridge_alone_decodes_a_nonlinearly_warped_teachers_latents_within_35_db(
        warped_teacher, photos, caplog):
    files = sorted(photos.iterdir())
    fit = load_eval_images(files, 96)
    with caplog.at_level(logging.INFO):
        student = build_student(recipe(init_bridge_steps=STEPS), warped_teacher, fit)
    assert "Latent bridge" in caplog.text
    images = load_eval_images(files, 128)  # another crop size than the fit's
    with torch.no_grad():
        latents = warped_teacher.encode(images)
        print("PSNR", psnr(student.decode(latents), warped_teacher.decode(latents)), caplog.text[-400:])
        assert psnr(student.decode(latents), warped_teacher.decode(latents)) >= 35


STEPS = 300
