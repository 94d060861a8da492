"""The small teacher shipped in weights/tiny-teacher, and the code that trains one."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import small_vae
from diffusers import AutoencoderKL
from kornia.metrics import psnr
from safetensors import safe_open
from skimage.data import astronaut

from tinyae.cli import main as tinyae_cli
from tinyae.data.images import center_crop, list_images, load_eval_images
from tinyae.errors import ExportError
from tinyae.models.presets import TEACHERS
from tinyae.models.teacher import load_teacher
from tinyae.training.tiny_teacher import TINY_TEACHER_ARCH, choose_factors, train_small_vae

SHIPPED = Path(TEACHERS["tiny"].repo_id)

# The shipped teacher gives 18.7 dB on this view (weights/tiny-teacher/README.md); the margin covers other CPUs.
ASTRONAUT_256_MIN_PSNR = 17.5


def astronaut_crop(size: int) -> torch.Tensor:
    from PIL import Image

    return center_crop(Image.fromarray(astronaut()), size)[None]


@pytest.fixture(scope="module")
def teacher():
    return load_teacher("tiny")


def test_shipped_teacher_loads_as_preset_with_its_estimated_scaling_factor(teacher):
    config = json.loads((SHIPPED / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderKL"
    assert teacher.scaling_factor == pytest.approx(config["scaling_factor"])
    assert teacher.scaling_factor != pytest.approx(1.0) and teacher.scaling_factor != pytest.approx(0.18215)
    assert teacher.shift_factor == pytest.approx(config["shift_factor"] or 0.0)
    assert (teacher.latent_channels, teacher.downscale) == (4, 8)
    assert list(config["block_out_channels"]) == list(TINY_TEACHER_ARCH["block_out_channels"])


def test_shipped_teacher_loads_with_plain_diffusers():
    vae = AutoencoderKL.from_pretrained(SHIPPED, torch_dtype=torch.float32)
    assert sum(p.numel() for p in vae.parameters()) < 5_000_000


def test_shipped_weights_are_fp16_safetensors_under_10_mb():
    path = SHIPPED / "diffusion_pytorch_model.safetensors"
    assert path.stat().st_size <= 10 * 2**20
    with safe_open(path, "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"F16"}


def test_shipped_teacher_reconstructs_an_unseen_photo(teacher):
    image = astronaut_crop(256)  # the astronaut was kept out of the teacher's training photos
    recon = teacher.decode(teacher.encode(image)).clamp(-1, 1)
    assert recon.shape == image.shape
    assert psnr((recon + 1) / 2, (image + 1) / 2, 1.0).item() > ASTRONAUT_256_MIN_PSNR


def test_shipped_teacher_latents_have_unit_std_in_diffusion_space(teacher, photos):
    files = list_images(photos)
    latents = torch.cat([teacher.encode(load_eval_images(files, size)).flatten() for size in (64, 128)])
    assert 0.75 < latents.std().item() < 1.33
    assert abs(latents.mean().item()) < 0.5


def test_chosen_factors_give_unit_scale_latents_and_shift_only_a_large_mean(photos):
    images = load_eval_images(list_images(photos), 64)
    vae = small_vae()
    with torch.no_grad():
        vae.quant_conv.bias[:4] -= vae.encode(images).latent_dist.mean.mean()  # centre the latents
    scaling, shift = choose_factors(vae, images)
    raw = vae.encode(images).latent_dist.mean
    assert shift == 0.0  # without a shift, the factor gives unit second moment (1/RMS)
    assert (raw * scaling).pow(2).mean().item() == pytest.approx(1.0, rel=1e-4)

    with torch.no_grad():
        vae.quant_conv.bias[:4] += 10.0  # every latent mean moves far from 0
    scaling, shift = choose_factors(vae, [images, images[:2, :, :32, :32]])
    raw = vae.encode(images).latent_dist.mean
    assert shift > 5.0
    assert abs(((raw - shift) * scaling).mean().item()) < 0.5


@pytest.fixture
def one_thread():
    """Tiny models train several times faster on one thread when the CPU is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_train_small_vae_writes_a_loadable_teacher_folder(photos, tmp_path, one_thread):
    out = tmp_path / "teacher"
    metrics = train_small_vae(
        photos, out, steps=40, resolution=32, batch_size=4, lr=3e-3, warmup=1, holdout=1, eval_resolutions=(32,),
        arch=dict(block_out_channels=(16, 32, 32, 32), norm_num_groups=8), time_codec=False,
    )
    losses = metrics["losses"]
    assert len(losses) == 40 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5

    assert sorted(p.name for p in out.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors",
                                                    "training.json"]
    assert json.loads((out / "training.json").read_text())["precision"] == "fp32"  # the record says how it trained
    config = json.loads((out / "config.json").read_text())
    assert math.isfinite(config["scaling_factor"]) and config["scaling_factor"] > 0
    assert config["scaling_factor"] == pytest.approx(metrics["scaling_factor"])
    loaded = load_teacher(str(out))
    assert loaded.scaling_factor == pytest.approx(metrics["scaling_factor"])
    assert loaded.encode(torch.zeros(1, 3, 32, 32)).shape == (1, 4, 4, 4)
    held = metrics["eval"]["holdout"]["32"]
    assert held["images"] == 1 and 0 < held["psnr"] < 100


def test_existing_output_is_refused_before_any_training(photos, tmp_path):
    out = tmp_path / "teacher"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists"):
        train_small_vae(photos, out, steps=10_000)
    assert (out / "keep.txt").read_text() == "mine"


def test_script_reports_a_missing_data_folder_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tinyae_cli(["train-teacher", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nowhere" in err and "\n" not in err
    assert not (tmp_path / "out").exists()
