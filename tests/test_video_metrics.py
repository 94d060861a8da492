"""Video metrics: per-frame quality averaged per clip, and flicker that sees wobble frame metrics miss."""

import pytest
import torch

from tinyae.evaluation.metrics import psnr
from tinyae.evaluation.video_metrics import flicker, temporal_psnr, video_metrics


def clip(seed: int = 0, frames: int = 5) -> torch.Tensor:
    """A smooth pan: each frame is the previous one shifted by a pixel."""
    base = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return torch.stack([base[..., i:i + 32] for i in range(frames)], 2)


def test_frame_metrics_are_the_image_metrics_of_each_frame_averaged_per_clip():
    a, b = clip(0), clip(0) + 0.05 * torch.randn(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(1))
    m = video_metrics(a, b, with_lpips=False)
    expected = psnr(a.transpose(1, 2).flatten(0, 1), b.transpose(1, 2).flatten(0, 1)).mean()
    assert m["psnr"].shape == (1,) and torch.isclose(m["psnr"][0], expected)
    assert 0 < m["ssim"][0] < 1


def test_a_constant_error_does_not_flicker_but_a_wobble_does():
    a = clip(0)
    offset = a + 0.1  # wrong, but steadily so
    wobble = a + 0.1 * torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0]).view(1, 1, 5, 1, 1)  # same size of error per frame
    assert flicker(offset, a)[0] < 1e-6 and temporal_psnr(offset, a)[0] > 60
    assert flicker(wobble, a)[0] == pytest.approx(0.1, abs=1e-5)  # |±0.2| in [-1, 1] is 0.1 in [0, 1]
    frames_offset = video_metrics(offset, a, with_lpips=False)["psnr"]
    frames_wobble = video_metrics(wobble, a, with_lpips=False)["psnr"]
    assert torch.isclose(frames_offset, frames_wobble, atol=0.01).all()  # frame metrics cannot tell them apart


def test_clips_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match="clips of equal shape"):
        flicker(clip(0, 5), clip(0, 4))


def test_lpips_is_reported_per_clip_with_the_real_network():
    a = clip(0)
    m = video_metrics(a, clip(1))
    assert m["lpips"].shape == (1,) and 0 < m["lpips"][0] < 1
    assert video_metrics(a, a)["lpips"][0] < 1e-6
