"""Image and latent metrics against values known in closed form or from scikit-image."""

import math

import pytest
import torch
import torch.nn.functional as F
from skimage.data import astronaut
from skimage.metrics import structural_similarity

from tinyae.evaluation.metrics import (
    MS_SSIM_MIN_SIZE,
    LatentStats,
    chroma_diff,
    image_metrics,
    latent_mse,
    latent_r2,
    lpips,
    ms_ssim,
    psnr,
    saturation_diff,
    ssim,
)


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    """skimage's astronaut at 256 px, in [-1, 1], shape (1, 3, 256, 256)."""
    img = torch.from_numpy(astronaut()).permute(2, 0, 1)[None].float() / 127.5 - 1
    return F.avg_pool2d(img, 2)


def _blur(img: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(F.avg_pool2d(img, factor), scale_factor=factor, mode="bilinear", align_corners=False)


def test_identical_images_are_perfect(photo):
    assert psnr(photo, photo).item() == math.inf
    assert ssim(photo, photo).item() == pytest.approx(1.0, abs=1e-5)
    assert ms_ssim(photo, photo).item() == pytest.approx(1.0, abs=1e-5)
    assert lpips(photo, photo).item() == 0.0


def test_psnr_of_a_known_noise_level(photo):
    """Adding +-d (in [-1, 1] units) everywhere is an error of d/2 on [0, 1]: PSNR = -20 log10(d / 2)."""
    base = photo * 0.5  # keep x +- d inside [-1, 1]
    signs = torch.randint(0, 2, (2, *base.shape[1:]), generator=torch.Generator().manual_seed(0)) * 2 - 1
    deltas = torch.tensor([0.02, 0.2]).view(2, 1, 1, 1)
    noisy = base + deltas * signs
    assert psnr(base.expand(2, -1, -1, -1), noisy).tolist() == pytest.approx([-20 * math.log10(0.01),
                                                                              -20 * math.log10(0.1)], abs=1e-3)


def test_ssim_matches_scikit_image(photo):
    noisy = (photo + 0.1 * torch.randn(photo.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    a, b = (x[0].permute(1, 2, 0).add(1).div(2).numpy() for x in (photo, noisy))
    expected = structural_similarity(a, b, data_range=1.0, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
    assert ssim(photo, noisy).item() == pytest.approx(expected, abs=1e-4)


def test_structural_metrics_fall_as_blur_grows(photo):
    mild, strong = _blur(photo, 2), _blur(photo, 8)
    for metric in (psnr, ssim, ms_ssim):
        assert metric(photo, mild).item() > metric(photo, strong).item()
    assert 0 < lpips(photo, mild).item() < lpips(photo, strong).item()


def test_ms_ssim_is_nan_below_its_minimum_size_and_defined_at_it(photo):
    small, edge = photo[..., :MS_SSIM_MIN_SIZE - 1, :], photo[..., :MS_SSIM_MIN_SIZE, :MS_SSIM_MIN_SIZE]
    assert math.isnan(ms_ssim(small, small * 0.8).item())
    assert 0 < ms_ssim(edge, edge * 0.8).item() < 1


def test_image_metrics_are_per_image(photo):
    pair = torch.cat([photo, photo])
    other = torch.cat([photo, _blur(photo, 4)])
    values = image_metrics(pair, other)
    assert set(values) == {"psnr", "ssim", "ms_ssim", "lpips", "chroma_diff", "saturation_diff", "colour_error"}
    for name, v in values.items():
        assert v.shape == (2,), name
    assert values["psnr"][0] == math.inf and values["psnr"][1] < 40
    assert values["lpips"][0] == 0 and values["lpips"][1] > 0


def test_mismatched_shapes_are_refused(photo):
    with pytest.raises(ValueError, match="equal shape"):
        psnr(photo, photo[..., :128])


def test_latent_r2_is_one_when_perfect_and_zero_for_the_channel_mean():
    scale = torch.tensor([1.0, 2, 3, 4]).view(1, 4, 1, 1)
    z = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * scale
    assert latent_r2(z, z).tolist() == pytest.approx([1.0] * 4)
    mean = z.mean(dim=(0, 2, 3), keepdim=True).expand_as(z)
    assert latent_r2(mean, z).tolist() == pytest.approx([0.0] * 4, abs=1e-6)
    assert latent_mse(z, z).tolist() == [0.0] * 6


def test_latent_r2_of_known_noise_ignores_the_latent_scale():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(16, 4, 16, 16, generator=gen)
    noise = 0.5 * torch.randn(z.shape, generator=gen)
    r2 = latent_r2(z + noise, z)
    assert r2.tolist() == pytest.approx([1 - 0.25] * 4, abs=0.03)  # 1 - var(noise) / var(z)
    assert latent_r2(10 * (z + noise), 10 * z).tolist() == pytest.approx(r2.tolist(), abs=1e-5)
    assert latent_mse(10 * (z + noise), 10 * z).mean().item() == pytest.approx(
        100 * latent_mse(z + noise, z).mean().item(), rel=1e-5)


def test_latent_stats_stream_batches_to_the_same_numbers():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(10, 4, 8, 8, generator=gen) * 3 + 1
    pred = z + torch.randn(z.shape, generator=gen)
    stats = LatentStats().update(pred[:3], z[:3]).update(pred[3:], z[3:])
    assert stats.r2().tolist() == pytest.approx(latent_r2(pred, z).tolist(), abs=1e-6)
    assert stats.mse() == pytest.approx(latent_mse(pred, z).mean().item(), rel=1e-6)
    assert stats.std().tolist() == pytest.approx(z.std(dim=(0, 2, 3), unbiased=False).tolist(), rel=1e-5)


def test_colour_metrics_see_dull_and_vivid_outputs():
    """Desaturation barely moves PSNR at the start, but it is what users call 'dim colours'."""
    image = torch.from_numpy(astronaut()).permute(2, 0, 1)[None].float().div(127.5).sub(1)[:, :, ::4, ::4]
    grey = image.mean(1, keepdim=True)
    dull, vivid = grey + 0.7 * (image - grey), (grey + 1.3 * (image - grey)).clamp(-1, 1)
    assert chroma_diff(image, image).abs().max() < 1e-4 and saturation_diff(image, image).abs().max() < 1e-6
    assert chroma_diff(dull, image) < -3 and saturation_diff(dull, image) < -0.05
    assert chroma_diff(vivid, image) > 2 and saturation_diff(vivid, image) > 0.02
    metrics = image_metrics(dull, image)
    assert torch.equal(metrics["colour_error"], metrics["chroma_diff"].abs())
