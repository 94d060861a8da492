"""Each loss term is a real training signal: a few optimizer steps on a fixed batch lower it."""

import pytest
import torch

from tinyae.config import LossConfig
from tinyae.data.images import list_images, load_eval_images
from tinyae.models.discriminator import Discriminator
from tinyae.models.student import Student
from tinyae.training.losses import DistillLoss, discriminator_loss, generator_adv_loss, weighted_total


@pytest.fixture
def batch(photos, small_teacher):
    images = load_eval_images(list_images(photos)[:2], 32)
    return images, small_teacher.encode(images)


def _steps(params, loss_fn, n=8, lr=3e-3):
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.9))
    values = []
    for _ in range(n):
        loss = loss_fn()
        values.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return values


@pytest.mark.parametrize("kind", ["mse", "l1"])
def test_latent_matching_decreases(batch, small_student_config, kind):
    torch.manual_seed(0)
    images, latents = batch
    student, loss = Student(small_student_config), DistillLoss(LossConfig(latent=kind))
    values = _steps(student.encoder.parameters(), lambda: loss.encoder_terms(student.encode(images), latents)["latent"][1])
    assert values[-1] < values[0]


@pytest.mark.parametrize("term", ["pixel", "lpips"])
def test_decoder_pixel_and_lpips_terms_decrease(batch, small_student_config, term):
    torch.manual_seed(0)
    images, latents = batch
    student, loss = Student(small_student_config), DistillLoss(LossConfig(lpips_weight=1.0))
    values = _steps(student.decoder.parameters(), lambda: loss.decoder_terms(student.decode(latents), images)[term][1])
    assert values[-1] < values[0]


def test_adversarial_term_decreases_against_a_fixed_discriminator(batch, small_student_config):
    torch.manual_seed(0)
    images, latents = batch
    student, disc = Student(small_student_config), Discriminator(4, width=16).requires_grad_(False)
    values = _steps(student.decoder.parameters(), lambda: generator_adv_loss(disc(student.decode(latents), latents)))
    assert values[-1] < values[0]


def test_discriminator_learns_to_tell_real_from_student_images(batch, small_student_config):
    torch.manual_seed(0)
    images, latents = batch
    fake = Student(small_student_config).decode(latents).detach()
    disc = Discriminator(4, width=16)
    values = _steps(disc.parameters(), lambda: discriminator_loss(disc(images, latents), disc(fake, latents)))
    assert values[-1] < values[0]


def test_discriminator_is_conditioned_on_the_latent(batch):
    images, latents = batch
    disc = Discriminator(4, width=16)
    assert not torch.allclose(disc(images, latents), disc(images, latents + 1))


def test_each_term_carries_its_recipe_weight_into_the_total(batch, small_student_config):
    images, latents = batch
    student = Student(small_student_config)
    loss = DistillLoss(LossConfig(latent_weight=2, pixel_weight=3, lpips_weight=0.5, adv_weight=0.25))
    fake_logits = torch.ones(2, 1, 4, 4)
    terms = loss.encoder_terms(student.encode(images), latents) | loss.decoder_terms(student.decode(latents), images,
                                                                                     fake_logits)
    assert {name: weight for name, (weight, _) in terms.items()} == {"latent": 2, "pixel": 3, "lpips": 0.5, "adv": 0.25}
    expected = sum(w * v for w, v in terms.values())
    assert weighted_total(terms).item() == pytest.approx(expected.item())
