"""Video students train through the image loop: same step, recipe, checkpoints, resume and export, with time."""

import argparse
import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from tinyae.cli import distill as distill_cli
from tinyae.config import StudentConfig, load_recipe
from tinyae.data.images import from_uint8
from tinyae.data.source import cache_recipe
from tinyae.errors import ConfigError, DataError, ExportError, TeacherLoadError
from tinyae.models.discriminator import FrameGroupDiscriminator, build_discriminator, frame_latents
from tinyae.models.student import Student
from tinyae.models.variants import resolve_arch
from tinyae.models.video_student import MemBlock, TGrow, TPool, VideoStudent
from tinyae.models.video_teacher import load_video_teacher
from tinyae.shipping.taehv import export_video_student
from tinyae.training.checkpoints import list_checkpoints
from tinyae.training.loop import distill
from tinyae.training.step import build_video_student
from tinyae.training.tiny_teacher import build_small_video_vae
from tinyae.training.warm_start import video_warm_start


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    """A small AutoencoderKLWan folder (random weights: the plumbing, not the quality, is under test)."""
    path = tmp_path_factory.mktemp("wan") / "vae"
    build_small_video_vae(0).save_pretrained(path)
    return path


def video_recipe(wan_dir, photos, out, **sections):
    overrides = {
        "teacher": {"name": str(wan_dir)},
        "data": {"path": str(photos), "resolution": 32, "frames": 5, "holdout": 1},
        "loss": {"adv_weight": 0.1, "adv_start": 1, "disc_width": 8, "disc_frames": 2},
        "train": {"steps": 2, "batch_size": 1, "log_every": 1, "checkpoint_every": 1, "checkpoints_total_limit": 0,
                  "output_dir": str(out), "log_with": None, "threads": 1},
    }
    for section, fields in sections.items():
        overrides[section] = overrides.get(section, {}) | fields
    return load_recipe("video-smoke", overrides)


@pytest.mark.slow
def test_a_video_teacher_trains_a_taehv_student_that_loads_exports_and_resumes_exactly(wan_dir, photos, tmp_path,
                                                                                       caplog):
    straight = distill(video_recipe(wan_dir, photos, tmp_path / "straight", train={"steps": 3}))
    student = VideoStudent.from_pretrained(straight / "student")
    assert student.taehv_name == "taew2_1" and student.arch.latent_channels == 16
    assert {p.name for p in (straight / "taehv").iterdir()} >= {"taew2_1.pth", "taew2_1.safetensors"}
    metrics = json.loads((straight / "metrics.json").read_text())
    for key in ("psnr_vs_teacher", "ssim_vs_teacher", "lpips_vs_teacher", "flicker_vs_teacher", "psnr_vs_original",
                "lpips_vs_original", "latent_r2", "decode_s_teacher", "speedup_parallel", "speedup_streaming"):
        assert isinstance(metrics[key], float), key
    assert metrics["steps"] == 3 and metrics["n_clips"] == 8 and metrics["frames"] == 5
    run = json.loads((straight / "run.json").read_text())
    assert run["taehv_model"] == "taew2_1" and run["time"]["wall_s"] > 0
    exported = export_video_student(straight / "student", "taew2_1", "fp32", tmp_path / "exported")
    assert {p.name for p in exported.iterdir()} >= {"taew2_1.pth", "taew2_1.safetensors"}

    # Stopped after 2 steps, then resumed to 3: the same weights as the straight run.
    crashed = tmp_path / "crashed"
    distill(video_recipe(wan_dir, photos, crashed))
    assert [p.name for p in list_checkpoints(crashed)] == ["checkpoint-1", "checkpoint-2"]
    with caplog.at_level(logging.INFO):
        distill(video_recipe(wan_dir, photos, crashed, train={"steps": 3, "resume": "latest"}))
    assert "Resumed from" in caplog.text
    ours, theirs = (load_file(p / "student" / "diffusion_pytorch_model.safetensors") for p in (crashed, straight))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_a_frame_group_discriminator_judges_each_run_of_consecutive_frames_with_their_latents():
    disc = build_discriminator("patch", 16, 8, frames=3)
    assert isinstance(disc, FrameGroupDiscriminator) and disc.inner.layers[0].in_channels == 3 * 3 + 16
    clips, latents = torch.rand(2, 3, 10, 32, 32) * 2 - 1, torch.randn(2, 16, 3, 4, 4)
    scores = disc(clips, latents)
    assert scores.shape == (2, 3, 4, 4)  # 3 groups of 3 frames per clip, one score map each
    late = clips.clone()
    late[:, :, 9] = 0  # the 10th frame fills no group: it is not judged
    assert torch.equal(disc(late, latents), scores)
    early = clips.clone()
    early[:, :, 0] = 0
    assert not torch.equal(disc(early, latents)[:, 0], scores[:, 0]) and torch.equal(disc(early, latents)[:, 1:],
                                                                                    scores[:, 1:])
    multiscale = build_discriminator("multiscale", 16, 8, frames=3)
    assert multiscale(clips, latents).shape == (2, 3 * 6, 4, 4)


def test_each_frame_is_conditioned_on_its_own_latent_by_the_causal_frame_rule():
    latents = torch.arange(3.0).view(1, 1, 3, 1, 1)
    assert frame_latents(latents, 9).flatten().tolist() == [0, 1, 1, 1, 1, 2, 2, 2, 2]


def test_the_frame_discriminator_copies_no_host_data_to_the_device_per_call(monkeypatch):
    # torch.tensor(python_list, device="cuda") is a blocking host-to-device copy on every step.
    expected = {(t, f): [0] + [min(t - 1, 1 + (k - 1) // max(1, -(-(f - 1) // max(t - 1, 1)))) for k in range(1, f)]
                for t in (1, 2, 3, 5) for f in (1, 4, 9, 17)}
    disc = build_discriminator("patch", 16, 8, frames=3)
    clips, latents = torch.rand(1, 3, 9, 16, 16) * 2 - 1, torch.randn(1, 16, 3, 2, 2)

    def no_host_data(*args, **kwargs):
        raise AssertionError("a tensor was built from host data")

    monkeypatch.setattr(torch, "tensor", no_host_data)
    disc(clips, latents)
    for (t, f), index in expected.items():
        assert frame_latents(torch.arange(float(t)).view(1, 1, t, 1, 1), f).flatten().tolist() == index


@pytest.fixture
def image_student(tmp_path):
    torch.manual_seed(1)
    student = Student(resolve_arch(load_recipe("smoke").student, 16, 8, None))
    for p in student.parameters():
        torch.nn.init.normal_(p, std=0.1)
    student.save_pretrained(tmp_path / "image-student")
    return student, tmp_path / "image-student"


def test_a_warm_start_from_an_image_student_copies_the_per_frame_convs_and_names_the_fresh_ones(
        wan_dir, photos, tmp_path, image_student, caplog):
    donor, folder = image_student
    recipe = video_recipe(wan_dir, photos, tmp_path / "run", student={"init": str(folder)})
    with caplog.at_level(logging.INFO):
        student = video_warm_start(recipe, "taew2_1")
    enc, dec = student.encoder, student.decoder
    assert torch.equal(enc[0].weight, donor.encoder.layers[0].weight)  # stem conv(3, 64)
    assert torch.equal(enc[3].weight, donor.encoder.layers[2].weight)  # first stride-2 conv
    block, image_block = enc[4], donor.encoder.layers[3]
    assert isinstance(block, MemBlock)
    assert torch.equal(block.conv[0].weight[:, :64], image_block.conv[0].weight)  # the current frame's half
    assert not block.conv[0].weight[:, 64:].any()  # the previous frame's half starts at zero
    assert torch.equal(block.conv[4].bias, image_block.conv[4].bias)
    assert torch.equal(enc[17].weight, donor.encoder.layers[14].weight)  # conv(64, 16): same latent channels
    assert torch.equal(dec[22].weight, donor.decoder.layers[18].weight)  # conv(64, 3)
    assert torch.equal(dec[15].conv[2].weight, donor.decoder.layers[12].conv[2].weight)  # a 64-wide block
    pool = enc[2]
    assert isinstance(pool, TPool) and torch.allclose(pool.conv.weight[:, :64, 0, 0], torch.eye(64) / 2)
    grow = dec[19]
    assert isinstance(grow, TGrow) and torch.equal(grow.conv.weight[64:, :, 0, 0], torch.eye(64))
    # The decoder's 256- and 128-wide stages have no image counterpart: fresh, and the log says so.
    assert "fresh: decoder.1, decoder.3" in caplog.text
    assert "encoder.0" not in caplog.text.split("fresh:")[1]


def test_a_warm_start_from_an_image_student_of_another_downscale_is_refused(wan_dir, photos, tmp_path):
    student = Student(resolve_arch(StudentConfig(variant="f32"), 32, 32, None))
    student.save_pretrained(tmp_path / "f32")
    recipe = video_recipe(wan_dir, photos, tmp_path / "run", student={"init": str(tmp_path / "f32")})
    with pytest.raises(ConfigError, match="downscales 32x but the 'taew2_1' layout 8x"):
        video_warm_start(recipe, "taew2_1")


@pytest.mark.parametrize("sections, error, message", [
    ({"student": {"taehv": "taew3"}}, ConfigError, "student.taehv 'taew3' is not a TAEHV layout"),
    ({"student": {"taehv": "taew2_2"}}, ConfigError, "reads 48 channels at 16x but the teacher"),
    ({"data": {"frames": 6}}, ConfigError, "data.frames 6 does not encode to whole latents"),
    ({"student": {"size": "nano"}}, ConfigError, "student.size shape image students"),
    ({"train": {"channels_last": True}}, ConfigError, "train.channels_last shape image students"),
    ({"teacher": {"scaling_factor": 0.5}}, TeacherLoadError, "do not apply to the video teacher"),
    ({"loss": {"disc_frames": 9}}, ConfigError, "loss.disc_frames 9 is more than the 5 frames"),
    ({"data": {"format": "tar"}}, DataError, "A video teacher trains on a folder of video files"),
    # issue 26, case 3: the same channels and downscale, another latent space (HunyuanVideo's, CogVideoX's)
    ({"student": {"taehv": "taehv"}}, ConfigError, "student.taehv 'taehv' stands for HunyuanVideo's latent space, "
                                                   "but the teacher .* is an AutoencoderKLWan"),
    ({"student": {"taehv": "taecvx"}}, ConfigError, "student.taehv 'taecvx' stands for CogVideoX's latent space"),
])
def test_a_video_run_refuses_settings_it_cannot_honour_before_any_work(wan_dir, photos, tmp_path, sections, error,
                                                                       message):
    out = tmp_path / "run"
    with pytest.raises(error, match=message):
        distill(video_recipe(wan_dir, photos, out, **sections))
    assert not (out / "recipe.json").exists() and not list_checkpoints(out)


def test_distill_with_a_video_teacher_and_no_recipe_takes_the_video_recipe(wan_dir):
    args = argparse.Namespace(recipe=None)
    assert distill_cli.recipe(args, ["--teacher", "wan2.1"]).name == "video"
    assert distill_cli.recipe(args, ["--teacher", str(wan_dir)]).name == "video"
    assert distill_cli.recipe(args, ["--teacher", "tiny"]).name == "sd"


@pytest.mark.slow
def test_a_teacher_cache_of_clips_holds_the_teachers_latents_and_trains_a_video_student(wan_dir, photos, tmp_path):
    recipe = video_recipe(wan_dir, photos, tmp_path / "run", train={"steps": 1}, loss={"adv_weight": 0.0})
    cache = cache_recipe(recipe, tmp_path / "cache", samples=2, shard_size=2, batch_size=2, show_progress=False)
    shard = load_file(cache / "shard-000000.safetensors")
    assert shard["images"].shape == (2, 3, 5, 32, 32) and shard["latents"].shape == (2, 16, 2, 4, 4)
    teacher = load_video_teacher(str(wan_dir))
    assert torch.allclose(shard["latents"], teacher.encode(from_uint8(shard["images"])), atol=1e-5)
    assert json.loads((cache / "index.json").read_text())["frames"] == 5

    out = distill(video_recipe(wan_dir, photos, tmp_path / "cached", train={"steps": 1}, data={"cache": str(cache)},
                               loss={"adv_weight": 0.0}))
    assert json.loads((out / "metrics.json").read_text())["steps"] == 1
    with pytest.raises(DataError, match="holds clips of 5 frames but training asks for clips of 9 frames"):
        distill(video_recipe(wan_dir, photos, tmp_path / "other", data={"cache": str(cache), "frames": 9}))


def test_a_video_student_records_its_teachers_latent_space_and_refuses_another_preset_layout(tmp_path):
    teacher = load_video_teacher("tiny-wan")
    student = build_video_student(load_recipe("video-smoke"), teacher)
    assert (student.taehv_name, student.config.teacher, student.config.teacher_class) == (
        "taew2_1", "tiny-wan", "AutoencoderKLWan")
    student.save_pretrained(tmp_path / "student")
    again = VideoStudent.from_pretrained(tmp_path / "student")
    assert (again.teacher, again.teacher_class) == ("tiny-wan", "AutoencoderKLWan")
    with pytest.raises(ConfigError, match="student.taehv 'taehv' stands for HunyuanVideo's latent space, but the "
                                          "teacher 'tiny-wan' is an AutoencoderKLWan whose students are 'taew2_1'"):
        build_video_student(load_recipe("video-smoke", {"student": {"taehv": "taehv"}}), teacher)


def test_a_truncated_video_student_as_init_is_named_in_one_sentence_and_leaves_nothing_behind(wan_dir, photos,
                                                                                              tmp_path):
    VideoStudent.published("taew2_1").save_pretrained(tmp_path / "donor")
    weights = tmp_path / "donor" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    out = tmp_path / "run"
    with pytest.raises(ExportError, match=r"'.*diffusion_pytorch_model.safetensors' is corrupt or truncated"):
        distill(video_recipe(wan_dir, photos, out, student={"init": str(tmp_path / "donor")}))
    assert not out.exists()
