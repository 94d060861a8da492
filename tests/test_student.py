"""The student is diffusers' AutoencoderTiny, key for key, where that class can hold it, and a diffusers
`TinyAutoencoder` otherwise; its layouts come from a registry of variants."""

import json

import pytest
import torch
from diffusers import AutoencoderTiny
from safetensors.torch import save_file

from tinyae.config import StudentConfig
from tinyae.errors import ConfigError
from tinyae.models.formats import load_student, to_taesd
from tinyae.models.student import Student
from tinyae.models.tiny_autoencoder import TinyAutoencoder
from tinyae.models.variants import resolve_arch

CONFIGS = [
    StudentConfig(latent_channels=4),
    StudentConfig(latent_channels=16, encoder_widths=[32], decoder_widths=[48], encoder_blocks=[1, 2, 2, 2],
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
    assert again.arch == student.arch
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


def test_an_autoencodertiny_config_with_per_stage_widths_is_refused_clearly():
    with pytest.raises(ValueError, match="no transition convs"):
        Student.arch_from_diffusers({"encoder_block_out_channels": [64, 64, 32, 32]})


@pytest.mark.parametrize("variant, channels, params", [("taesd", 4, (1_222_532, 1_222_531)),
                                                       ("flux_2", 32, (1_338_528, 1_338_499)),
                                                       ("f32", 32, (1_256_288, 8_301_763))])
def test_registered_variants_have_the_upstream_shapes(variant, channels, params):
    """Parameter counts of madebyollin/taesd's taesd, taef2 and taesana files."""
    student = Student(resolve_arch(StudentConfig(variant=variant, latent_channels=channels)))
    assert (sum(p.numel() for p in student.encoder.parameters()),
            sum(p.numel() for p in student.decoder.parameters())) == params
    downscale = 32 if variant == "f32" else 8
    assert student.downscale == downscale
    assert student.encode(torch.zeros(1, 3, 64, 64)).shape == (1, channels, 64 // downscale, 64 // downscale)


def test_the_variant_follows_the_teacher_unless_named():
    assert resolve_arch(StudentConfig(), latent_channels=32, downscale=32).encoder_stem == (32, 64)
    assert resolve_arch(StudentConfig(), latent_channels=32, downscale=8, family="flux2").pool
    assert resolve_arch(StudentConfig(variant="flux2"), latent_channels=32).pool  # --student.variant flux2
    assert not resolve_arch(StudentConfig(), latent_channels=16, downscale=8).pool
    with pytest.raises(ConfigError, match="downscales 8x but the teacher 32x"):
        resolve_arch(StudentConfig(variant="taesd"), latent_channels=32, downscale=32)


def test_16x_teachers_get_the_f16_layout_whose_pair_reads_back(tmp_path):
    arch = resolve_arch(StudentConfig(), latent_channels=48, downscale=16)  # e.g. Wan 2.2's f16c48 VAE
    assert arch == resolve_arch(StudentConfig(variant="f16", latent_channels=48)) and arch.encoder_stem == (64,)
    torch.manual_seed(0)
    student = Student(arch)
    assert student.encode(torch.zeros(1, 3, 64, 64)).shape == (1, 48, 4, 4)
    assert student.decode(torch.zeros(1, 48, 4, 4)).shape == (1, 3, 64, 64)
    encoder, decoder = to_taesd(student.state_dict())
    save_file(encoder, tmp_path / "mine_encoder.safetensors")
    save_file(decoder, tmp_path / "mine_decoder.safetensors")
    again = load_student(tmp_path / "mine_encoder.safetensors")  # the stride-2 stem is read off the tensors
    assert again.arch == arch and all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                                          student.state_dict().values()))


def test_per_stage_overrides_name_the_field_that_does_not_fit():
    arch = resolve_arch(StudentConfig(decoder_widths=[96, 64, 48, 32]), latent_channels=4)
    assert arch.decoder_widths == (96, 64, 48, 32) and not arch.autoencoder_tiny
    assert resolve_arch(StudentConfig(decoder_widths=[32]), latent_channels=4).decoder_widths == (32,) * 4
    with pytest.raises(ConfigError, match="decoder_widths lists 3 stages but variant 'taesd' has 4 decoder_blocks; set"):
        resolve_arch(StudentConfig(decoder_widths=[64, 64, 32]), latent_channels=4)


@pytest.mark.parametrize("variant", ["flux_2", "f32"])
def test_a_layout_autoencodertiny_cannot_hold_saves_as_a_diffusers_tinyautoencoder(variant, tmp_path):
    torch.manual_seed(0)
    student = Student(resolve_arch(StudentConfig(variant=variant, latent_channels=32))).eval()
    student.save_pretrained(tmp_path / "s")
    assert json.loads((tmp_path / "s" / "config.json").read_text())["_class_name"] == "TinyAutoencoder"
    model = TinyAutoencoder.from_pretrained(tmp_path / "s").eval()
    assert model.config.scaling_factor == 1.0
    assert 2 ** (len(model.config.block_out_channels) - 1) == student.downscale  # what pipelines size latents by
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        latents = model.encode(images).latents
        assert torch.equal(latents, student.encode(images))
        assert torch.equal(model.decode(latents).sample, student.decode(latents))
        assert torch.equal(model.to(torch.float16).decode(latents.half()).sample.float().round(),
                           student.half().decode(latents.half()).float().round())
    again = Student.from_pretrained(tmp_path / "s")
    assert again.arch == student.arch


def test_the_output_bias_starts_at_mid_grey():
    student = Student(StudentConfig(latent_channels=4)).init_output_bias()
    assert torch.equal(student.decoder.layers[-1].bias, torch.full((3,), 0.5))  # 0.5 of [0, 1] is 0 in [-1, 1]
