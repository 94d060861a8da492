"""Latent-space diagnostics, checked on constructed VAEs whose truth is known."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import small_vae
from diffusers import AutoencoderTiny
from torch import nn

from tinyae.cli import main as tinyae_cli
from tinyae.data.images import list_images, load_eval_images
from tinyae.errors import DataError
from tinyae.evaluation.factors import as_teacher, encode_raw, estimate_factors, factors_from_latents
from tinyae.evaluation.inspection import (
    distance_map,
    find_anomalies,
    inspect_vae,
    measure_change,
    perturbation_locality,
    posterior_stats,
    raw_decoder,
    replace_with_neighbour_median,
)
from tinyae.models.student import Student
from tinyae.models.teacher import Teacher

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def images64(photos):
    return load_eval_images(list_images(photos), 64)


@pytest.fixture(scope="module")
def images128(photos):
    return load_eval_images(list_images(photos), 128)


def constant_posterior_vae(means: list[float], logvars: list[float]):
    """An AutoencoderKL whose posterior is N(means[c], exp(logvars[c])) at every position of every image."""
    vae = small_vae()
    with torch.no_grad():
        vae.quant_conv.weight.zero_()
        vae.quant_conv.bias.copy_(torch.tensor(means + logvars))
    return vae


def tiny_conv_vae() -> AutoencoderTiny:
    torch.manual_seed(0)
    return AutoencoderTiny(encoder_block_out_channels=(16,) * 4, decoder_block_out_channels=(16,) * 4,
                           num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1)).eval()


def receptive_radius(decoder: nn.Module, downscale: int) -> int:
    """How far (pixels) beyond an edited cell a stack of convs and nearest upsamplings can reach."""
    scale, radius = downscale, 0
    for m in decoder.modules():  # a Sequential's modules come in execution order
        if isinstance(m, nn.Conv2d):
            radius += (m.kernel_size[0] // 2) * m.dilation[0] * scale
        elif isinstance(m, nn.Upsample):
            scale //= int(m.scale_factor)
    return radius


# ---------------------------------------------------------------- scale / shift


def test_factors_of_a_known_latent_distribution_fall_inside_their_intervals(images64):
    means, stds = [0.5, -1.0, 0.0, 2.0], [0.25, 1.0, 4.0, 2.0]
    vae = constant_posterior_vae(means, [2 * math.log(s) for s in stds])
    est = estimate_factors(vae, images64, sample=True, confidence=0.99)

    for c, (mu, sd) in enumerate(zip(means, stds)):
        assert est.per_channel_scaling_ci[c][0] < 1 / sd < est.per_channel_scaling_ci[c][1]
        assert est.per_channel_shift_ci[c][0] < mu < est.per_channel_shift_ci[c][1]
    # All channels pooled: a mixture of the four Gaussians.
    mixture_mean = sum(means) / 4
    mixture_var = sum(s**2 + m**2 for m, s in zip(means, stds)) / 4 - mixture_mean**2
    assert est.scaling_ci[0] < 1 / math.sqrt(mixture_var) < est.scaling_ci[1]
    assert est.shift_ci[0] < mixture_mean < est.shift_ci[1]
    assert est.num_images == len(images64)


def test_a_95_percent_interval_from_five_images_covers_the_true_factor_most_of_the_time():
    gen = torch.Generator().manual_seed(0)
    trials = 300
    covered = 0
    for trial in range(trials):
        latents = 0.3 + 0.5 * torch.randn(5, 1, 8, 8, generator=gen)  # true scaling_factor 2
        lo, hi = factors_from_latents(latents, num_bootstrap=500, seed=trial).scaling_ci
        covered += lo < 2.0 < hi
    # Measured: 92% here, where a plain percentile bootstrap covers 84% (too narrow with few images).
    assert 0.89 <= covered / trials <= 0.99


def test_scaling_the_latents_by_k_divides_the_factor_by_k(images64):
    vae = small_vae()
    before = estimate_factors(vae, images64)
    k, b = 4.0, 0.3
    with torch.no_grad():  # the first half of quant_conv's outputs is the posterior mean
        vae.quant_conv.weight[:4] *= k
        vae.quant_conv.bias[:4] = vae.quant_conv.bias[:4] * k + b
    after = estimate_factors(vae, images64)

    assert after.scaling_factor == pytest.approx(before.scaling_factor / k, rel=1e-4)
    assert after.scaling_ci[0] < before.scaling_factor / k < after.scaling_ci[1]
    assert after.shift_factor == pytest.approx(before.shift_factor * k + b, rel=1e-4)
    assert after.scaling_ci[1] - after.scaling_ci[0] > 0


def test_estimated_factors_make_diffusion_space_latents_zero_mean_unit_variance(images64):
    vae = small_vae()
    est = estimate_factors(Teacher(vae, 0.5, 0.1), images64)
    z = Teacher(vae, est.scaling_factor, est.shift_factor).encode(images64)
    assert z.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert z.std().item() == pytest.approx(1.0, rel=1e-3)
    assert est.scaling_factor_without_shift == pytest.approx(1 / z.div(est.scaling_factor).add(est.shift_factor)
                                                             .pow(2).mean().sqrt().item(), rel=1e-4)


def test_factors_need_at_least_two_images(images64):
    with pytest.raises(DataError, match="at least 2 images"):
        estimate_factors(small_vae(), images64[:1])


def test_a_student_is_inspected_as_a_deterministic_vae(images64, small_student_config):
    student = Student(small_student_config)
    mean, logvar = encode_raw(as_teacher(student), images64[:2])
    assert logvar is None
    assert torch.allclose(mean, student.encode(images64[:2]), atol=1e-5)


# ---------------------------------------------------------------- posterior and anomalies


def test_sampling_noise_far_below_fp16_precision_is_reported_as_invisible():
    mean = torch.full((2, 4, 8, 8), 1.0)
    quiet = posterior_stats(mean, torch.full_like(mean, -20.0))  # std 4.5e-5 against fp16's 4.9e-4
    loud = posterior_stats(mean, torch.zeros_like(mean))
    assert quiet["sample_exceeds_rounding_fraction"] == {"fp16": 0.0, "bf16": 0.0}
    assert quiet["logvar"]["median"] == -20.0
    assert quiet["std_over_abs_mean"]["median"] == pytest.approx(math.exp(-10), rel=1e-5)
    assert loud["sample_exceeds_rounding_fraction"]["fp16"] > 0.99
    assert loud["sample_exceeds_rounding_fraction"]["bf16"] > 0.99


def test_logvar_at_diffusers_clamp_is_counted():
    logvar = torch.full((1, 4, 8, 8), -20.0)
    logvar[0, 0, 2, 2] = -30.0
    stats = posterior_stats(torch.ones_like(logvar), logvar)
    assert stats["logvar"]["min"] == -30.0
    assert stats["logvar"]["at_clamp_fraction"] == pytest.approx(1 / 256)


def logvar_hole_vae(y: int, x: int, channel: int = 1):
    """small_vae whose encoder conv_out emits logvar -30 at one fixed latent position, like the SD VAE's holes."""
    vae = small_vae()
    latent_channels = vae.config.latent_channels

    def hole(module, inputs, output):
        output = output.clone()
        output[:, latent_channels + channel, y, x] = -30.0
        return output

    vae.encoder.conv_out.register_forward_hook(hole)
    return vae


def test_an_extreme_logvar_at_a_fixed_position_is_flagged_there_in_every_image(images64, tmp_path):
    y, x = 3, 5
    report = inspect_vae(logvar_hole_vae(y, x), images64, tmp_path / "report", locality_images=1,
                         ordinary_positions=2)

    flagged = [a for a in report["anomalies"]["items"] if a["kind"] == "logvar"]
    assert flagged and (flagged[0]["y"], flagged[0]["x"]) == (y, x)
    assert flagged[0]["frequency"] == 1.0
    assert all((a["y"], a["x"]) == (y, x) for a in flagged)
    # The hole is edited and replaced in the locality experiments, next to ordinary positions.
    assert [(c["y"], c["x"]) for c in report["locality"]["cases"] if c["kind"] == "anomalous"] == [(y, x)]
    assert [r["kind"] for r in report["locality"]["replacement"]] == ["anomalous", "ordinary (control)"]

    written = json.loads((tmp_path / "report" / "report.json").read_text())
    assert written["anomalies"]["items"][0]["y"] == y
    for name in ("report.md", "latent_histograms.png", "latent_maps.png", "posterior.png", "locality.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert f"| logvar | 1 | {y} | {x} | 100% |" in (tmp_path / "report" / "report.md").read_text()


def test_the_unedited_vae_has_no_recurring_outlier_there(images64):
    mean, logvar = encode_raw(as_teacher(small_vae()), images64)
    assert not [a for a in find_anomalies(logvar, "logvar") if (a.y, a.x) == (3, 5)]


def test_outliers_that_do_not_recur_are_not_reported():
    maps = torch.randn(6, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    for i in range(6):
        maps[i, 0, i, i] = 50.0  # a different position in each image
    maps[:4, 1, 3, 7] = -50.0  # the same position in 4 of 6 images
    found = find_anomalies(maps, "mean", z_threshold=5, min_frequency=0.5)
    assert [(a.channel, a.y, a.x) for a in found] == [(1, 3, 7)]
    assert found[0].frequency == pytest.approx(4 / 6)


# ---------------------------------------------------------------- locality


def test_change_is_measured_from_the_edited_cell_footprint():
    diff = torch.zeros(32, 32)
    diff[8:16, 8:16] = 0.5  # inside cell (1, 1) of an f8 latent
    diff[8, 25] = 0.1  # 10 px right of the cell (columns 8-15)
    change = measure_change(diff, [(1, 1)], downscale=8, threshold=0.01)
    assert change.changed_fraction == pytest.approx(65 / 1024)
    assert change.reach_px == 10
    assert change.radius90_px == 0
    assert change.profile[:2] == [0.5, 0.0]  # inside the cell, then 1-7 px away
    assert distance_map((32, 32), [(1, 1)], 8)[0, 0] == 8


def test_a_convolutional_decoder_changes_only_pixels_within_its_receptive_field(images128):
    tiny = tiny_conv_vae()
    radius = receptive_radius(tiny.decoder, 8)
    assert radius == 61  # 8 + 3*8 + 4 + 3*4 + 2 + 3*2 + 1 + 3 + 1, see DecoderTiny
    latents, _ = encode_raw(as_teacher(tiny), images128[:1])
    positions = [(1, 1), (8, 8), (14, 3)]
    changes, diffs = perturbation_locality(raw_decoder(as_teacher(tiny)), latents[0], positions, 3.0, 8,
                                           threshold=1e-4)
    for (y, x), change, diff in zip(positions, changes, diffs):
        assert change.changed_fraction > 0.05
        assert change.reach_px <= radius
        assert diff[distance_map(diff.shape, [(y, x)], 8) > radius].max() < 1e-6
        assert change.profile[0] > 1e-3
        assert change.profile[-1] is None or change.profile[-1] < 1e-6  # 128 px and beyond


def test_a_decoder_with_a_global_pooling_branch_changes_pixels_far_beyond_it(images128):
    tiny = tiny_conv_vae()
    radius = receptive_radius(tiny.decoder, 8)
    tiny.decoder.layers[0].register_forward_hook(lambda m, i, out: out + out.mean((2, 3), keepdim=True))
    latents, _ = encode_raw(as_teacher(tiny), images128[:1])
    (change,), (diff,) = perturbation_locality(raw_decoder(as_teacher(tiny)), latents[0], [(1, 1)], 3.0, 8,
                                               threshold=1e-4)
    assert change.reach_px > radius
    assert change.changed_fraction > 0.5
    assert diff[distance_map(diff.shape, [(1, 1)], 8) > radius].max() > 1e-4


def test_replacing_an_outlier_takes_the_median_of_its_ordinary_neighbours():
    latents = torch.arange(2 * 5 * 5, dtype=torch.float32).view(2, 5, 5)
    latents[:, 2, 2] = 1000.0
    latents[:, 2, 3] = -1000.0  # a second outlier, never used as a neighbour
    fixed = replace_with_neighbour_median(latents, [(2, 2), (2, 3)])
    neighbours = [latents[:, j, i] for j in (1, 2, 3) for i in (1, 2, 3) if (j, i) not in {(2, 2), (2, 3)}]
    assert torch.equal(fixed[:, 2, 2], torch.stack(neighbours, 1).median(1).values)
    untouched = torch.ones(5, 5, dtype=torch.bool)
    untouched[2, 2] = untouched[2, 3] = False
    assert torch.equal(fixed[:, untouched], latents[:, untouched])


# ---------------------------------------------------------------- the script


@pytest.mark.slow
def test_script_inspects_a_student_folder_and_refuses_an_existing_report(photos, tmp_path, small_student_config,
                                                                          capsys):
    Student(small_student_config).save_pretrained(tmp_path / "student")
    args = ["inspect-vae", "--vae", str(tmp_path / "student"), "--data", str(photos), "--out", str(tmp_path / "report"),
            "--resolution", "64", "--locality-images", "1", "--positions", "2", "--bootstrap", "200"]
    tinyae_cli(args)
    out = capsys.readouterr().out
    assert "recommended scaling_factor" in out and "deterministic VAE" in out
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["vae"]["class"] == "AutoencoderTiny"
    assert report["command"].startswith("tinyae inspect-vae --vae")
    assert not (tmp_path / "report" / "posterior.png").exists()

    with pytest.raises(SystemExit, match="2"):  # the report is there: nothing is overwritten without --overwrite
        tinyae_cli(args)
    assert "already exists" in capsys.readouterr().err
    assert json.loads((tmp_path / "report" / "report.json").read_text()) == report


def test_script_explains_a_missing_data_folder(tmp_path, capsys):
    small_vae().save_pretrained(tmp_path / "vae")
    with pytest.raises(SystemExit, match="2"):
        tinyae_cli(["inspect-vae", "--vae", str(tmp_path / "vae"), "--data", str(tmp_path / "nope")])
    assert "does not exist" in capsys.readouterr().err
