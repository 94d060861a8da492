"""The student is diffusers' AutoencoderTiny, key for key, and behaves like it."""

import pytest
import torch
from diffusers import AutoencoderTiny

from tinyae.config import StudentConfig
from tinyae.models.student import Student

CONFIGS = [
    StudentConfig(latent_channels=4),
    StudentConfig(latent_channels=16, encoder_width=32, decoder_width=48, encoder_blocks=[1, 2, 2, 2],
                  decoder_blocks=[2, 2, 2, 1]),
]


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "slim16"])
def test_state_dict_is_the_autoencodertiny_layout(config):
    ours = Student(config).state_dict()
    theirs = AutoencoderTiny(**Student(config).diffusers_config()).state_dict()
    assert list(ours) == list(theirs)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_default_student_has_about_a_million_parameters_per_side():
    s = Student(StudentConfig(latent_channels=4))
    for half in (s.encoder, s.decoder):
        assert 0.9e6 < sum(p.numel() for p in half.parameters()) < 1.5e6


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "slim16"])
def test_exported_folder_loads_in_diffusers_with_equal_outputs(config, tmp_path):
    torch.manual_seed(0)
    student = Student(config).eval()
    student.save_pretrained(tmp_path / "student")
    loaded = AutoencoderTiny.from_pretrained(tmp_path / "student").eval()
    assert loaded.config.scaling_factor == 1.0 and loaded.config.shift_factor == 0.0
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    latents = torch.randn(2, config.latent_channels, 8, 8) * 2
    with torch.no_grad():
        assert (loaded.encode(images).latents - student.encode(images)).abs().max() <= 1e-5
        assert (loaded.decode(latents).sample - student.decode(latents)).abs().max() <= 1e-5


def test_save_and_load_round_trip_is_exact(tmp_path, small_student_config):
    student = Student(small_student_config)
    student.save_pretrained(tmp_path / "s")
    again = Student.from_pretrained(tmp_path / "s")
    assert again.config == student.config
    for a, b in zip(student.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_latents_are_downscaled_eight_times_and_images_come_back_in_range(small_student_config):
    s = Student(small_student_config)
    z = s.encode(torch.rand(1, 3, 64, 96) * 2 - 1)
    assert z.shape == (1, 4, 8, 12)
    out = s.decode(torch.randn(1, 4, 8, 12) * 100)  # wild latents are soft-clamped
    assert out.shape == (1, 3, 64, 96) and torch.isfinite(out).all()


def test_gradient_checkpointing_changes_memory_not_results(small_student_config):
    torch.manual_seed(0)
    plain = Student(small_student_config)
    ckpt = Student(small_student_config)
    ckpt.load_state_dict(plain.state_dict())
    ckpt.set_gradient_checkpointing(True)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    for model in (plain, ckpt):
        model(images).square().mean().backward()
    assert torch.allclose(plain(images), ckpt(images))  # the [-1,1] -> [0,1] rescale is kept (diffusers drops it)
    for a, b in zip(plain.parameters(), ckpt.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_per_stage_widths_are_refused_clearly():
    with pytest.raises(ValueError, match="one width"):
        Student.config_from_diffusers({"encoder_block_out_channels": [64, 64, 32, 32]})
