"""The teacher is a frozen VAE that reads and writes diffusion-space latents."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import small_vae
from diffusers import AutoencoderTiny

from tinyae.config import TeacherConfig
from tinyae.errors import TeacherLoadError
from tinyae.models.presets import TEACHERS
from tinyae.models.teacher import build_teacher, load_teacher

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
