"""The teacher is a frozen VAE that reads and writes diffusion-space latents."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import small_vae
from diffusers import AutoencoderTiny

from tinyae.config import TeacherConfig, load_recipe
from tinyae.data.images import list_images, load_eval_images
from tinyae.errors import TeacherLoadError
from tinyae.models.presets import TEACHERS
from tinyae.models.teacher import build_teacher, load_teacher
from tinyae.utils.dtypes import frozen_dtype

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name, channels, scale, shift", [
    ("sd", 4, 0.18215, 0.0), ("sdxl", 4, 0.13025, 0.0), ("sd3", 16, 1.5305, 0.0609), ("flux", 16, 0.3611, 0.1159),
])
def test_presets_carry_the_family_factors(name, channels, scale, shift):
    preset = TEACHERS[name]
    assert (preset.latent_channels, preset.scaling_factor, preset.shift_factor) == (channels, scale, shift)
    assert "/" in preset.repo_id


def test_encode_returns_diffusion_space_latents_and_decode_inverts_the_scaling(small_teacher):
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    z = small_teacher.encode(images)
    raw = small_teacher.vae.encode(images).latent_dist.mean
    assert torch.allclose(z, (raw - 0.1) * 0.5, atol=1e-6)
    assert torch.allclose(small_teacher.decode(z), small_teacher.vae.decode(raw).sample, atol=1e-4)


def test_encoding_is_the_deterministic_mean_unless_sampling_is_asked(small_teacher):
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.equal(small_teacher.encode(images), small_teacher.encode(images))
    assert not torch.equal(small_teacher.encode(images), small_teacher.encode(images, sample=True))


def test_the_teacher_is_frozen(small_teacher):
    small_teacher.train()
    assert not small_teacher.training and not small_teacher.vae.training
    assert not any(p.requires_grad for p in small_teacher.parameters())


def test_a_local_folder_loads_with_its_config_factors_and_cli_overrides(tmp_path):
    small_vae().save_pretrained(tmp_path / "vae")
    teacher = load_teacher(str(tmp_path / "vae"))
    assert (teacher.scaling_factor, teacher.shift_factor, teacher.latent_channels) == (0.5, 0.1, 4)
    teacher = load_teacher(TeacherConfig(name=str(tmp_path / "vae"), scaling_factor=0.25, shift_factor=0.0))
    assert (teacher.scaling_factor, teacher.shift_factor) == (0.25, 0.0)


def test_a_local_subfolder_and_half_precision_load(tmp_path):
    small_vae().save_pretrained(tmp_path / "pipe" / "vae")
    teacher = load_teacher(TeacherConfig(name=str(tmp_path / "pipe"), subfolder="vae", dtype="bf16"))
    assert teacher.dtype == torch.bfloat16
    assert teacher.encode(torch.zeros(1, 3, 32, 32)).dtype == torch.float32


@pytest.mark.parametrize("bf16", [True, False], ids=["bf16-gpu", "older-gpu"])
def test_teacher_dtype_auto_runs_each_family_in_the_half_precision_it_is_safe_in(monkeypatch, bf16):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    on_gpu = {name: frozen_dtype("cuda", preset.fp16_safe) for name, preset in TEACHERS.items()}
    assert on_gpu["sdxl"] == "fp16"  # madebyollin's fp16-fix; SDXL's original VAE overflows fp16
    assert {on_gpu[n] for n in ("sd", "sd3", "flux", "flux2", "sana", "qwen-image")} == {"bf16" if bf16 else "fp32"}
    assert {frozen_dtype("cpu", preset.fp16_safe) for preset in TEACHERS.values()} == {"fp32"}


def test_a_recipe_with_teacher_dtype_auto_loads_the_teacher_in_the_resolved_dtype(tmp_path, monkeypatch):
    small_vae().save_pretrained(tmp_path / "vae")
    assert load_teacher(TeacherConfig(name=str(tmp_path / "vae"), dtype="auto"), device="cpu").dtype == torch.float32
    asked = []
    monkeypatch.setattr("tinyae.models.teacher.frozen_dtype", lambda device, safe: asked.append((device, safe)) or
                        "bf16")  # as on a GPU
    assert load_teacher(TeacherConfig(name=str(tmp_path / "vae"), dtype="auto")).dtype == \
        torch.bfloat16
    assert asked == [("cpu", False)]  # a VAE outside the presets is not known to be fp16-safe
    assert load_recipe("base").teacher.dtype == "auto" and load_recipe("sdxl").teacher.dtype == "fp16"


def test_a_bf16_teacher_encodes_in_bf16_and_stays_within_a_percent_of_fp32(photos):
    images = load_eval_images(list_images(photos), 64)
    full, half = (load_teacher(TeacherConfig(name="tiny", dtype=d)) for d in ("fp32", "bf16"))
    seen = []
    half.vae.encoder.conv_in.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    z, z_half = full.encode(images), half.encode(images)
    assert seen == [torch.bfloat16] and z_half.dtype == torch.float32  # computed in bf16, handed on as float32
    assert (z - z_half).abs().mean() < 0.01 * z.abs().mean() and (z - z_half).abs().max() < 0.05 * z.std()


def test_an_autoencodertiny_folder_is_a_teacher_with_unit_factors(tmp_path):
    tiny = AutoencoderTiny(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4)
    tiny.save_pretrained(tmp_path / "taesd")
    teacher = load_teacher(str(tmp_path / "taesd"))
    assert (teacher.scaling_factor, teacher.shift_factor, teacher.downscale) == (1.0, 0.0, 8)
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.allclose(teacher.encode(images), tiny.encode(images).latents.detach())


def test_offline_hub_failure_is_one_sentence_naming_the_repo_and_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TeacherLoadError) as info:
        load_teacher("sdxl")
    message = str(info.value)
    assert "madebyollin/sdxl-vae-fp16-fix" in message and "--teacher DIR" in message
    assert "\n" not in message


def test_a_folder_without_config_is_refused_clearly(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherLoadError, match="no config.json"):
        load_teacher(str(tmp_path / "empty"))


def test_an_unknown_name_lists_the_presets():
    with pytest.raises(TeacherLoadError, match="sdxl"):
        load_teacher("not-a-preset")


def test_weights_free_preset_architectures_build_offline():
    teacher = build_teacher("flux")
    assert teacher.latent_channels == 16 and teacher.shift_factor == 0.1159
    assert "random weights" in teacher.name


def test_distill_script_exits_2_with_one_line_when_the_hub_is_unreachable(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "distill.py"), "--teacher", "sdxl",
                           "--data", str(tmp_path), "--output", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "madebyollin/sdxl-vae-fp16-fix" in last
