"""Latent spaces are exact bijections, recorded as data, and fitted per channel where the family normalises per channel."""

import pytest
import torch
from tiny_pipelines import flux2_vae, qwen_image_vae

from tinyae.data.images import list_images, load_eval_images
from tinyae.errors import ConfigError
from tinyae.evaluation.factors import as_teacher, estimate_factors
from tinyae.evaluation.inspection import inspect_vae, render_markdown, summary
from tinyae.models.latent_space import LatentSpace, PatchNormSpace, PerChannelSpace, ScalarSpace, patchify

SPACES = [
    ScalarSpace(0.3611, 0.1159),
    PerChannelSpace(torch.randn(16, generator=torch.Generator().manual_seed(0)), torch.rand(16) + 0.5, 0.5),
    PatchNormSpace(torch.randn(128), torch.rand(128) + 0.1, 1e-4),
]


@pytest.mark.parametrize("space", SPACES, ids=lambda s: s.kind)
def test_every_space_inverts_exactly_and_round_trips_as_json(space):
    channels = 32 if space.kind == "patch-norm" else 16
    raw = torch.randn(2, channels, 6, 8) * 3
    assert torch.allclose(space.to_raw(space.from_raw(raw)), raw, atol=1e-5)
    assert LatentSpace.from_dict(space.to_dict()) == space
    assert space.describe()


@pytest.mark.parametrize("space", SPACES[1:], ids=lambda s: s.kind)
def test_a_space_copies_its_statistics_to_the_device_once_not_on_every_encode(space, monkeypatch):
    # On a GPU, torch.tensor(python_floats, device="cuda") waits for all queued work: once per run, not per step.
    raw = torch.randn(2, 32 if space.kind == "patch-norm" else 16, 6, 8)
    space.to_raw(space.from_raw(raw))
    real_tensor, made = torch.tensor, []
    monkeypatch.setattr(torch, "tensor", lambda *args, **kwargs: made.append(args) or real_tensor(*args, **kwargs))
    for _ in range(3):
        space.to_raw(space.from_raw(raw))
    assert made == []


def test_the_per_channel_space_normalises_each_channel_by_its_own_statistics():
    mean, std = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 4.0])
    raw = mean.view(1, 2, 1, 1) + std.view(1, 2, 1, 1) * torch.randn(4, 2, 8, 8)
    z = PerChannelSpace(mean, std).from_raw(raw)
    assert torch.allclose(z, (raw - mean.view(1, 2, 1, 1)) / std.view(1, 2, 1, 1), atol=1e-6)


def test_the_patch_norm_space_normalises_each_position_of_a_2x2_patch_separately():
    space = PatchNormSpace([0.0] * 3 + [10.0], [1.0] * 3 + [4.0])  # one channel; the patch's bottom-right cell
    raw = torch.zeros(1, 1, 4, 4)
    raw[:, :, 1::2, 1::2] = 10.0
    assert torch.equal(space.from_raw(raw), torch.zeros(1, 1, 4, 4))
    assert space.latent_channels == 1


def test_bad_spaces_are_refused_in_one_sentence():
    with pytest.raises(ConfigError, match="one mean and one std per channel"):
        PerChannelSpace([0.0, 1.0], [1.0])
    with pytest.raises(ConfigError, match="multiple of 4"):
        PatchNormSpace([0.0] * 6, [1.0] * 6)
    with pytest.raises(ConfigError, match="non-zero"):
        ScalarSpace(0.0)
    with pytest.raises(ConfigError, match="Unknown latent space kind"):
        LatentSpace.from_dict({"kind": "nonsense"})


@pytest.fixture(scope="module")
def photos64(photos):
    return load_eval_images(list_images(photos), 64)


@pytest.mark.parametrize("make_vae, channels", [(qwen_image_vae, 16), (flux2_vae, 128)], ids=["qwen-image", "flux2"])
def test_fitted_per_channel_spaces_give_zero_mean_unit_variance_channels(make_vae, channels, photos64):
    teacher = as_teacher(make_vae())
    estimate = estimate_factors(teacher, photos64)
    assert len(estimate.per_channel_shift) == channels  # FLUX.2: statistics of the 2x2-patchified channels
    fitted = teacher.latent_space.fitted(estimate)
    assert type(fitted) is type(teacher.latent_space)
    z = teacher.latent_space.stats_view(fitted.from_raw(teacher.encode_raw(photos64)))
    assert torch.allclose(z.mean((0, 2, 3)), torch.zeros(channels), atol=1e-4)
    assert torch.allclose(z.std((0, 2, 3), correction=0), torch.ones(channels), atol=1e-3)


@pytest.mark.parametrize("make_vae, channels", [(qwen_image_vae, 16), (flux2_vae, 128)], ids=["qwen-image", "flux2"])
def test_inspection_reports_configured_and_recommended_per_channel_statistics(make_vae, channels, photos64):
    vae = make_vae()
    report = inspect_vae(vae, photos64, None, num_bootstrap=200, locality_images=1, ordinary_positions=1)
    space = report["latent_space"]
    assert space["kind"] == as_teacher(vae).latent_space.kind and len(space["channels"]) == channels
    configured = space["configured"]["mean"]
    assert [c["configured_mean"] for c in space["channels"]] == pytest.approx(configured)
    for c in space["channels"]:
        assert c["mean_ci"][0] <= c["mean"] <= c["mean_ci"][1] and c["std_ci"][0] <= c["std"] <= c["std_ci"][1]
    assert LatentSpace.from_dict(space["recommended"]).kind == space["kind"]
    assert report["vae"]["configured_scaling_factor"] is None or space["kind"] == "per-channel"
    assert "per-channel means lie inside" in summary(report)
    assert "| configured mean |" in render_markdown(report)


def test_flux2_statistics_are_those_of_the_patchified_latents(photos64):
    teacher = as_teacher(flux2_vae())
    estimate = estimate_factors(teacher, photos64)
    patches = patchify(teacher.encode_raw(photos64))
    assert estimate.per_channel_shift == pytest.approx(patches.mean((0, 2, 3)).tolist(), abs=1e-5)
