"""Student sizes narrow a layout's outer stages, where the MACs are, and compose with every layout."""

import pytest
import torch

from tinyae.config import StudentConfig, load_recipe
from tinyae.errors import ConfigError
from tinyae.evaluation.macs import macs_by_resolution, meta_copy, op_macs
from tinyae.models.student import Student
from tinyae.models.variants import SIZES, VARIANTS, resolve_arch

LAYOUTS = [("taesd", 4), ("flux_2", 32), ("f32", 32)]


def arch(variant: str, channels: int, size: str | None = None, **fields):
    return resolve_arch(StudentConfig(variant=variant, size=size, latent_channels=channels, **fields))


def decoder_macs(student: Student, px: int = 512) -> int:
    f = student.downscale
    return op_macs(meta_copy(student), "decode", (1, student.latent_channels, px // f, px // f))


@pytest.mark.parametrize("variant, channels", LAYOUTS)
def test_tiny_is_the_published_layout_and_no_size_means_tiny(variant, channels):
    assert arch(variant, channels, "tiny") == arch(variant, channels) == arch(variant, channels, None)


def test_slim_caps_the_full_and_half_resolution_stages_of_taesd():
    a = arch("taesd", 4, "slim")
    assert a.decoder_widths == (64, 64, 32, 16) and a.encoder_widths == (16, 32, 64, 64)
    assert a.decoder_blocks == (3, 3, 3, 1) and a.encoder_blocks == (1, 3, 3, 3)
    nano = arch("taesd", 4, "nano")
    assert nano.decoder_widths == (64, 48, 24, 12) and nano.decoder_blocks == (3, 3, 2, 1)
    assert nano.encoder_widths == (12, 24, 48, 64) and nano.encoder_blocks == (1, 2, 3, 3)


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("variant, channels", LAYOUTS)
def test_every_size_composes_with_every_layout(variant, channels, size):
    base, sized = arch(variant, channels), arch(variant, channels, size)
    assert sized.pool == base.pool and sized.downscale == base.downscale
    assert len(sized.encoder_stem) == len(base.encoder_stem)
    assert all(s <= b for s, b in zip(sized.decoder_widths, base.decoder_widths))
    assert all(s <= b for s, b in zip(sized.encoder_widths, base.encoder_widths))
    assert sized.decoder_widths[0] == base.decoder_widths[0]  # the deepest decoder stage is kept (f32: 256 wide)
    student = Student(sized)
    z = student.encode(torch.zeros(1, 3, 64, 64))
    assert z.shape == (1, channels, 64 // base.downscale, 64 // base.downscale)
    assert student.decode(z).shape == (1, 3, 64, 64)


def test_a_slim_flux_2_student_keeps_its_pool_branch_and_round_trips(tmp_path):
    student = Student(arch("flux_2", 32, "slim"))
    assert student.arch.pool and not student.arch.autoencoder_tiny
    student.save_pretrained(tmp_path / "s")
    again = Student.from_pretrained(tmp_path / "s")
    assert again.arch == student.arch


def test_explicit_fields_win_over_the_size():
    a = arch("taesd", 4, "slim", decoder_widths=[96, 64, 48, 32])
    assert a.decoder_widths == (96, 64, 48, 32) and a.encoder_widths == (16, 32, 64, 64)


def test_an_unknown_size_names_the_registered_ones():
    with pytest.raises(ConfigError, match="Unknown student.size 'huge'; registered: tiny, lean, slim, nano"):
        arch("taesd", 4, "huge")


def test_a_recipe_picks_a_size_with_one_flag():
    recipe = load_recipe("smoke", ["--student.size", "slim"])
    assert recipe.student.size == "slim"
    assert resolve_arch(recipe.student, 4, 8).decoder_widths == (64, 64, 32, 16)
    assert set(SIZES) >= {"tiny", "slim", "nano"} and set(VARIANTS) >= {"taesd", "flux_2", "f32"}


def test_most_of_the_default_decoders_macs_are_at_full_resolution():
    student = Student(arch("taesd", 4)).to("meta")
    levels = macs_by_resolution(student.decoder.layers, torch.empty(1, 4, 64, 64, device="meta"))
    total = sum(levels.values())
    assert list(levels) == [64, 128, 256, 512]
    assert levels[512] / total > 0.5 and (levels[512] + levels[256]) / total > 0.85
    assert total == decoder_macs(Student(arch("taesd", 4)))  # the per-stage count adds up to the whole


def test_sizes_order_by_decoder_macs_and_slim_is_at_least_3_5x_cheaper_than_tiny():
    macs = {size: decoder_macs(Student(arch("taesd", 4, size))) for size in SIZES}
    assert macs["tiny"] > macs["lean"] > macs["slim"] > macs["nano"]
    assert macs["tiny"] / macs["slim"] >= 3.5
    assert round(macs["tiny"] / 1e9, 1) == 70.7  # TAESD's decoder at 512 px
