"""Warm starts: a student begins as a published TAE, aligned to the teacher's latent space, and stays good."""

import json
import logging
from pathlib import Path

import pytest
import torch

from tinyae.cli import main as distill_cli_main
from tinyae.config import StudentConfig, load_recipe
from tinyae.data.images import load_eval_images
from tinyae.errors import ConfigError, DataError, ExportError
from tinyae.models.formats import load_student
from tinyae.models.teacher import load_teacher
from tinyae.models.variants import resolve_arch
from tinyae.models.video_student import VideoStudent
from tinyae.training.adversarial import Adversary
from tinyae.training.derived_teacher import derive_teacher, grade, random_space, transform_space
from tinyae.training.loop import distill
from tinyae.training.step import build_student
from tinyae.training.warm_start import fit_latent_map, load_donor

torch.set_num_threads(1)
TAESANA_ENCODER = Path(__file__).resolve().parent.parent / "weights" / "taesd-upstream" / "taesana_encoder.pth"


@pytest.fixture(scope="module")
def crops(photos):
    return load_eval_images(sorted(photos.iterdir()), 64)


@pytest.fixture(scope="module")
def mixed_teacher(tmp_path_factory):
    """TAEF2 whose latent space is a random invertible linear map of its own (no decoder fine-tune)."""
    folder = tmp_path_factory.mktemp("mixed") / "teacher"
    transform_space(load_donor("taef2"), random_space(32, seed=3)).save_pretrained(folder, family="flux2")
    return load_teacher(str(folder))


def recipe(parts="both", **student):
    return load_recipe("finetune", {"student": {"init": "taef2", **student}, "data": {"resolution": 64},
                                    "train": {"parts": parts}})


def r2(prediction, target):
    return float(1 - ((prediction - target) ** 2).sum() / ((target - target.mean((0, 2, 3), keepdim=True)) ** 2).sum())


def test_the_ridge_fit_recovers_an_exact_linear_map_with_r2_near_one():
    source = torch.randn(4, 6, 8, 8)
    weight, bias = torch.randn(3, 6), torch.randn(3)
    target = torch.einsum("td,bdhw->bthw", weight, source) + bias.view(1, 3, 1, 1)
    fit = fit_latent_map(source, target, ridge=1e-6)
    assert fit.r2 > 0.9999
    assert torch.allclose(fit.weight, weight, atol=1e-3) and torch.allclose(fit.bias, bias, atol=1e-3)


def test_a_teacher_whose_latents_are_a_linear_map_of_the_donors_gets_encoder_r2_above_0999_before_training(
        mixed_teacher, crops):
    student = build_student(recipe(), mixed_teacher, crops)
    with torch.no_grad():
        assert r2(student.encode(crops), mixed_teacher.encode(crops)) >= 0.999


def test_an_exact_copy_of_the_teacher_starts_as_the_teacher(crops, caplog):
    teacher = load_teacher("taef2")
    with caplog.at_level(logging.INFO):
        student = build_student(recipe(), teacher, crops)
    assert "no latent map" in caplog.text
    donor = load_donor("taef2")
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), donor.state_dict().values()))


def test_a_donor_of_another_channel_count_is_mapped_into_the_teachers(crops, caplog):
    teacher = load_teacher("tiny")  # 4 channels, from a 32-channel donor
    with caplog.at_level(logging.INFO):
        student = build_student(recipe(), teacher, crops)
    assert student.latent_channels == 4 and student.decoder.layers[0].in_channels == 4
    assert "teacher <- donor, R²" in caplog.text and "donor <- teacher, R²" in caplog.text
    with torch.no_grad():
        assert student.encode(crops).shape == teacher.encode(crops).shape


def test_architecture_overrides_apply_on_the_donor_and_the_log_names_the_fresh_layers(crops, caplog):
    teacher = load_teacher("taef2")
    with caplog.at_level(logging.INFO):
        student = build_student(recipe(size="nano", act_fn="silu"), teacher, crops)
    expected = resolve_arch(StudentConfig(variant="flux_2", size="nano", act_fn="silu"), 32, 8)
    assert student.arch == expected
    assert "fresh: encoder.layers.0" in caplog.text  # the 12-wide entry conv cannot take the donor's 64-wide one
    donor = load_donor("taef2")
    deep = student.decoder.layers[2]  # the first decoder stage keeps its width: the donor's block
    assert torch.equal(deep.conv[0].weight, donor.decoder.layers[2].conv[0].weight)


def test_a_donor_of_another_downscale_is_refused_with_the_reason(crops):
    with pytest.raises(ConfigError, match="downscales 32x but the teacher 8x.*cannot add or drop"):
        build_student(load_recipe("finetune", {"student": {"init": str(TAESANA_ENCODER)},
                                               "data": {"resolution": 64}}), load_teacher("taef2"), crops)


def test_a_full_vae_preset_as_donor_is_refused_with_the_reason(crops):
    with pytest.raises(ConfigError, match="names a full VAE, not a tiny autoencoder"):
        build_student(load_recipe("finetune", {"student": {"init": "sd"}, "data": {"resolution": 64}}),
                      load_teacher("taef2"), crops)


def test_the_look_grade_is_warmer_and_keeps_the_image_range():
    grey = torch.zeros(1, 3, 4, 4)
    graded = grade(grey)
    assert graded[:, 0].mean() > graded[:, 2].mean() and graded.abs().max() <= 1


@pytest.mark.slow
def test_the_finetune_recipe_keeps_an_exact_copy_within_half_a_db_after_20_steps(tmp_path):
    out = distill(load_recipe("finetune", {
        "teacher": {"name": "taef2"}, "student": {"init": "taef2"},
        "data": {"path": "builtin:skimage", "resolution": 64, "holdout": 2},
        "train": {"steps": 20, "batch_size": 2, "output_dir": str(tmp_path / "run"), "log_with": None,
                  "threads": 1, "checkpoint_every": 20}}))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 20
    assert metrics["psnr_vs_original"] >= metrics["teacher_psnr_vs_original"] - 0.5


@pytest.mark.slow
def test_the_finetune_recipe_runs_end_to_end_and_trains_only_the_decoder_when_asked(tmp_path, mixed_teacher):
    teacher_dir = mixed_teacher.name
    out = distill(load_recipe("finetune", {
        "teacher": {"name": teacher_dir}, "student": {"init": "taef2"},
        "data": {"path": "builtin:skimage", "resolution": 64, "holdout": 2},
        "train": {"steps": 3, "batch_size": 2, "parts": "decoder", "output_dir": str(tmp_path / "run"),
                  "log_with": None, "threads": 1, "checkpoint_every": 3}}))
    assert json.loads((out / "recipe.json").read_text())["train"]["parts"] == "decoder"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["psnr_vs_teacher"] > 20
    trained, donor = load_student(out / "student"), load_donor("taef2")
    last = len(donor.encoder.layers) - 1  # the mapped conv; every other encoder layer is the donor's, untrained
    for key, value in donor.encoder.state_dict().items():
        if not key.startswith(f"layers.{last}."):
            assert torch.equal(trained.encoder.state_dict()[key], value), key


def test_encoder_widths_given_with_a_donor_build_that_width_and_only_unmatched_layers_start_fresh(crops, caplog):
    with caplog.at_level(logging.INFO):
        student = build_student(recipe(encoder_widths=[32]), load_teacher("taef2"), crops)
    assert student.arch.encoder_widths == (32, 32, 32, 32) and student.arch.decoder_widths == (64, 64, 64, 64)
    fresh = caplog.text.split("fresh: ")[1]
    assert "encoder.layers.0" in fresh and "decoder." not in fresh  # the decoder is the donor's, whole


def test_a_frozen_half_that_would_start_fresh_is_refused_before_training_with_the_fix(crops, tmp_path, capsys):
    # issue 26, case 5: new encoder widths give no donor weights to the encoder, which train.parts decoder freezes
    with pytest.raises(ConfigError, match=r"train.parts decoder freezes the encoder, but the donor 'taef2' gives it "
                                          r"no weights for encoder.layers.0.*pass --train.parts both"):
        build_student(recipe("decoder", encoder_widths=[32, 32, 32, 32]), load_teacher("taef2"), crops)
    with pytest.raises(ConfigError, match="freezes the decoder.*no weights for decoder.layers.*--train.parts both"):
        build_student(recipe("encoder", decoder_widths=[32]), load_teacher("taef2"), crops)
    # no donor at all: the frozen half would be random; the CLI says so in one sentence and leaves nothing behind
    out = tmp_path / "cold"
    with pytest.raises(SystemExit) as exit_info:
        distill_cli_main(["distill", "--recipe", "finetune", "--teacher", "tiny", "--data", "builtin:skimage",
                          "--output", str(out), "--train.threads", "1"])
    assert exit_info.value.code == 2 and not out.exists()
    assert "freezes the encoder, but there is no student.init" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="there is no student.init.*pass --train.parts both"):
        build_student(load_recipe("finetune", {"data": {"resolution": 64}}), load_teacher("tiny"), crops)
    build_student(recipe("decoder", decoder_widths=[32]), load_teacher("taef2"), crops)  # a fresh half that trains


def test_a_donor_that_is_not_finite_or_not_an_image_student_is_refused_as_what_it_is(tmp_path, photos, crops):
    nan = load_donor("taef2")  # issue 26, case 16
    with torch.no_grad():
        nan.decoder.layers[0].weight[0, 0, 0, 0] = float("nan")
    nan.save_pretrained(tmp_path / "nan", family="flux2")
    with pytest.raises(ExportError, match=r"The donor '.*nan' \(student.init\) has weights that are not finite "
                                          r"numbers.*start from another donor") as error:
        build_student(recipe(init=str(tmp_path / "nan")), load_teacher("taef2"), crops)
    assert "optim.lr" not in str(error.value)
    with pytest.raises(ConfigError, match="--donor 'sd' names a full VAE"):
        derive_teacher(photos, tmp_path / "derived", donor="sd")
    VideoStudent.published("taew2_1").save_pretrained(tmp_path / "video")
    for attempt in (lambda: derive_teacher(photos, tmp_path / "derived", donor=str(tmp_path / "video")),
                    lambda: build_student(recipe(init=str(tmp_path / "video")), load_teacher("taef2"), crops)):
        with pytest.raises(ExportError, match="holds a video student .*--to taehv") as error:
            attempt()
        assert "full VAE" not in str(error.value)


def test_a_negative_ridge_is_refused_at_start():
    with pytest.raises(ConfigError, match="student.init_ridge must be >= 0"):
        load_recipe("finetune", {"student": {"init": "taef2", "init_ridge": -1.0}})


def test_derive_teacher_refuses_an_empty_photo_folder_and_an_existing_output(tmp_path, photos):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no jpg"):
        derive_teacher(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "out").mkdir()
    with pytest.raises(ConfigError, match="already exists: pass --overwrite"):
        derive_teacher(photos, tmp_path / "out")


def test_a_derived_teacher_is_reproducible_from_its_seed_and_changes_the_look(tmp_path, photos, crops):
    first = derive_teacher(photos, tmp_path / "a", seed=1, steps=2, resolution=64, batch_size=1)
    derive_teacher(photos, tmp_path / "b", seed=1, steps=2, resolution=64, batch_size=1)
    a, b = load_student(tmp_path / "a"), load_student(tmp_path / "b")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert first["steps"] == 2 and json.loads((tmp_path / "a" / "derived.json").read_text())["seed"] == 1
    teacher = load_teacher(str(tmp_path / "a"))
    assert teacher.latent_channels == 32 and teacher.family == "flux2"


def test_training_one_half_refuses_adversarial_terms_that_would_not_run():
    with pytest.raises(ConfigError, match="train.parts encoder trains no decoder"):
        load_recipe("finetune", {"train": {"parts": "encoder"}, "loss": {"adv_weight": 0.1}})
    with pytest.raises(ConfigError, match="needs train.parts both"):
        load_recipe("finetune", {"loss": {"encoder_adv_weight": 0.1}})


def test_with_the_teachers_decode_as_target_the_discriminator_judges_against_it_not_the_photos(tmp_path, monkeypatch):
    seen = []
    real_step = Adversary.step

    def recording(self, real, fake, latents):
        seen.append((real.detach().clone(), latents.detach().clone()))
        return real_step(self, real, fake, latents)

    monkeypatch.setattr(Adversary, "step", recording)
    distill(load_recipe("finetune", {
        "teacher": {"name": "tiny"},
        "data": {"path": "builtin:skimage", "resolution": 32, "holdout": 0},
        "loss": {"adv_weight": 0.1, "adv_start": 0, "disc_width": 8},
        "student": {"encoder_blocks": [1], "decoder_blocks": [1]},
        "train": {"steps": 1, "batch_size": 2, "parts": "both", "output_dir": str(tmp_path / "run"),
                  "log_with": None, "threads": 1, "checkpoint_every": 1}}))
    (real, latents), = seen
    teacher = load_teacher("tiny")
    with torch.no_grad():
        assert torch.allclose(real, teacher.decode(latents), atol=1e-5)  # the look the fine-tune keeps
