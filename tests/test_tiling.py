"""Tiled encode/decode: a partition of unity, exact for local maps, seamless on trained students of any layout."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderTiny

from tinyae.config import StudentConfig
from tinyae.data.images import list_images, load_eval_images
from tinyae.errors import ConfigError
from tinyae.evaluation.metrics import psnr
from tinyae.models import formats
from tinyae.models.formats import load_student
from tinyae.models.student import Student
from tinyae.models.tiling import Tiling, blend_weights, tile_starts, tiled_decode, tiled_encode
from tinyae.models.tiny_autoencoder import TinyAutoencoder, diffusers_model
from tinyae.models.variants import resolve_arch
from tinyae.shipping.preview import load_preview_decoder
from tinyae.utils.weights import read_weights

UPSTREAM = Path(__file__).resolve().parent.parent / "weights" / "taesd-upstream"
# Stated in the README ("Tiling"): tiled vs untiled on trained TAEF2 at 256 px, 16-latent tiles, 8 overlap.
DECODE_PSNR_MARGIN = 45.0  # dB
ENCODE_RELATIVE_RMSE = 0.03  # of the latents' standard deviation


@pytest.mark.parametrize("length, tile, overlap", [(5, 8, 2), (64, 16, 4), (65, 16, 4), (100, 24, 8), (33, 32, 16)])
@pytest.mark.parametrize("scale", [1, 8, 32])
def test_tiles_cover_with_the_overlap_and_weights_sum_to_one(length, tile, overlap, scale):
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    assert starts[0] == 0 and starts[-1] + size == length
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))  # neighbours overlap enough
    total = torch.zeros(length * scale)
    for start, w in zip(starts, blend_weights(starts, tile, length, scale)):
        assert w.shape == (size * scale,) and (w > 0).all()
        total[start * scale:start * scale + size * scale] += w
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6)


@pytest.mark.parametrize("channels", [4, 16, 32])
@pytest.mark.parametrize("factor", [8, 32])
def test_tiling_is_exact_for_maps_that_only_look_within_one_latent_pixel(channels, factor):
    """Nearest upsampling and average pooling see no neighbours: tiles must reassemble them exactly."""
    latents = torch.randn(2, channels, 13, 21)
    images = torch.randn(2, 3, 13 * factor, 21 * factor)
    tiling = Tiling(tile=6, overlap=2)
    decoded = tiled_decode(lambda z: F.interpolate(z[:, :3], scale_factor=factor), latents, factor, tiling)
    assert torch.allclose(decoded, F.interpolate(latents[:, :3], scale_factor=factor), atol=1e-5)
    encoded = tiled_encode(lambda x: F.avg_pool2d(x, factor).repeat(1, channels, 1, 1)[:, :channels], images,
                           factor, tiling)
    assert encoded.shape == (2, channels, 13, 21)
    assert torch.allclose(encoded, F.avg_pool2d(images, factor).repeat(1, channels, 1, 1)[:, :channels], atol=1e-5)


@pytest.fixture(scope="module")
def taef2():
    return load_student(UPSTREAM / "taef2_encoder.pth", family="flux2").eval()


@pytest.fixture(scope="module")
def photos256(photos):
    return load_eval_images(list_images(photos)[:3], 256)


@torch.no_grad()
def test_tiled_taef2_matches_the_untiled_one_within_the_stated_margin(taef2, photos256):
    """Trained weights, 32 channels and the GroupNorm pool branch, which tiles must not cut."""
    latents = taef2.encode(photos256)
    reference = taef2.decode(latents).clamp(-1, 1)
    taef2.enable_tiling(tile=16, overlap=8)
    try:
        assert taef2.use_tiling
        tiled_latents = taef2.encode(photos256)
        tiled_images = taef2.decode(latents).clamp(-1, 1)
    finally:
        taef2.disable_tiling()
    assert psnr(tiled_images, reference).min() > DECODE_PSNR_MARGIN
    assert (tiled_latents - latents).pow(2).mean().sqrt() / latents.std() < ENCODE_RELATIVE_RMSE


@torch.no_grad()
def test_cutting_the_pool_branch_into_tiles_would_not_be_seamless(taef2, photos256):
    """Why the pool stages run untiled: tiling the whole decoder costs well over 10 dB."""
    latents = taef2.encode(photos256)
    reference = taef2.decode(latents).clamp(-1, 1)
    naive = tiled_decode(taef2.decoder, latents, 8, Tiling(16, 8)).clamp(-1, 1)
    assert psnr(naive, reference).min() < DECODE_PSNR_MARGIN - 10


@torch.no_grad()
def test_the_32x_taesana_encoder_tiles_too(photos):
    encoder = Student(resolve_arch(StudentConfig(variant="f32", latent_channels=32))).eval()
    encoder.encoder.layers.load_state_dict(read_weights(UPSTREAM / "taesana_encoder.pth"), strict=True)
    images = load_eval_images(list_images(photos)[:2], 512)
    latents = encoder.encode(images)
    encoder.enable_tiling(tile=12, overlap=6)  # 384 px image tiles
    tiled = encoder.encode(images)
    assert tiled.shape == latents.shape == (2, 32, 16, 16)
    assert (tiled - latents).pow(2).mean().sqrt() / latents.std() < ENCODE_RELATIVE_RMSE


def test_small_inputs_and_disabled_tiling_take_the_plain_path():
    student = Student(StudentConfig(latent_channels=16, decoder_widths=[16], encoder_widths=[16])).eval()
    z = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        plain = student.decode(z)
        student.enable_tiling(tile=8, overlap=2)
        assert torch.equal(student.decode(z), plain)  # one tile: no blending at all
        student.disable_tiling()
        assert not student.use_tiling
    with pytest.raises(ConfigError, match="at most half"):
        Tiling(tile=8, overlap=5)
    with pytest.raises(ConfigError, match="divisible by 8"):
        tiled_encode(student.encoder, torch.zeros(1, 3, 60, 64), 8)


def test_the_diffusers_class_tiles_a_16_channel_student(tmp_path):
    """AutoencoderTiny's own tiled encode writes 4 channels; a tiled model is a TinyAutoencoder that does not."""
    torch.manual_seed(0)
    student = Student(StudentConfig(latent_channels=16, encoder_widths=[16], decoder_widths=[16],
                                    encoder_blocks=[1, 1, 1, 1], decoder_blocks=[1, 1, 1, 1])).eval()
    assert isinstance(diffusers_model(student), AutoencoderTiny)
    model = diffusers_model(student, tiling=Tiling(8, 2))
    assert isinstance(model, TinyAutoencoder) and model.use_tiling
    images = torch.rand(1, 3, 160, 96) * 2 - 1
    with torch.no_grad():
        latents = model.encode(images).latents
        assert latents.shape == (1, 16, 20, 12)
        assert torch.allclose(latents, tiled_encode(student.encoder, images, 8, Tiling(8, 2)), atol=1e-6)
        assert torch.allclose(model.decode(latents).sample, tiled_decode(student.decoder, latents, 8, Tiling(8, 2)),
                              atol=1e-6)
        model.disable_tiling()
        assert torch.allclose(model.decode(latents).sample, student.decoder(latents), atol=1e-6)
    slim = Student(resolve_arch(StudentConfig(size="slim", latent_channels=16))).eval()  # saves as TinyAutoencoder
    slim.save_pretrained(tmp_path / "slim")
    loaded = TinyAutoencoder.from_pretrained(tmp_path / "slim").eval()
    loaded.enable_tiling(tile=8, overlap=2)
    with torch.no_grad():
        assert torch.allclose(loaded.decode(latents).sample, tiled_decode(slim.decoder, latents, 8, Tiling(8, 2)),
                              atol=1e-5)


def test_preview_decoders_tile_when_asked(tmp_path, monkeypatch):
    torch.manual_seed(0)
    student = Student(StudentConfig(latent_channels=16, encoder_widths=[16], decoder_widths=[16],
                                    encoder_blocks=[1, 1, 1, 1], decoder_blocks=[1, 1, 1, 1])).eval()
    student.save_pretrained(tmp_path / "student")
    z = torch.randn(1, 16, 24, 24)
    decoder = load_preview_decoder(tmp_path / "student", tiling=Tiling(8, 2))
    assert decoder.use_tiling
    with torch.no_grad():
        expected = tiled_decode(student.decoder, z, 8, Tiling(8, 2))
        assert torch.allclose(decoder.decode(z).sample, expected, atol=1e-6)
        # A Hub AutoencoderTiny (here served from the folder) becomes a tiling TinyAutoencoder too.
        monkeypatch.setattr(formats, "fetch_snapshot", lambda repo, patterns, what: tmp_path / "student")
        hub = load_preview_decoder("someone/tiny-16ch", tiling=True)
        assert isinstance(hub, TinyAutoencoder) and hub.use_tiling and hub.tiling == Tiling()
        assert torch.allclose(hub.decode(z).sample, student.decode(z), atol=1e-5)  # 24 latents fit one tile
