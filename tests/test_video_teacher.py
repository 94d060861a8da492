"""Video teachers speak the latents their pipelines hand the transformer, checked against the pipelines' own code.

Small configs of each diffusers video VAE are built offline with random weights; the
conventions are the pipelines' (diffusers' own functions where a pipeline has one, else the
line of its __call__ that turns latents back into the VAE's).
"""

import inspect
from types import SimpleNamespace

import pytest
import torch
from diffusers import CogVideoXPipeline, HunyuanVideoPipeline, LTXPipeline, WanPipeline

from tinyae.errors import TeacherLoadError
from tinyae.models.video_student import VIDEO_MODELS
from tinyae.models.video_teacher import VIDEO_TEACHERS, build_video_teacher, load_video_teacher

SMALL = {
    "wan2.1": dict(base_dim=8, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[True, True]),
    "wan2.2": dict(base_dim=8, decoder_base_dim=8, dim_mult=[1, 2, 2], num_res_blocks=1,
                   temperal_downsample=[True, True]),
    "hunyuan-video": dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
                          mid_block_add_attention=False),
    "ltx-video": dict(latent_channels=8, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                      layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1)),
    "cogvideox": dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, latent_channels=4),
}


def small(name: str):
    torch.manual_seed(0)
    return build_video_teacher(name, **SMALL[name])


def latents_for(teacher, frames: int = 2, side: int = 2) -> torch.Tensor:
    return torch.randn(1, teacher.latent_channels, frames, side, side, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
@pytest.mark.parametrize("name", ["wan2.1", "wan2.2"])
def test_wan_teachers_undo_the_per_channel_normalisation_as_wan_pipeline_does(name):
    code = inspect.getsource(WanPipeline.__call__)
    assert "latents_std = 1.0 / torch.tensor(self.vae.config.latents_std)" in code
    assert "latents = latents / latents_std + latents_mean" in code
    teacher = small(name)
    config = teacher.vae.config
    z = latents_for(teacher)
    mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1)
    std = 1.0 / torch.tensor(config.latents_std).view(1, -1, 1, 1, 1)
    assert (teacher.decode(z) - teacher.vae.decode(z / std + mean).sample).abs().max() < 1e-5


@torch.no_grad()
def test_wan_2_2_patchifies_48_channels_and_1_plus_4k_frames_give_1_plus_k_latents():
    teacher = small("wan2.2")
    z = teacher.encode(torch.rand(1, 3, 5, 32, 32) * 2 - 1)
    assert z.shape == (1, 48, 2, 4, 4)  # 2x2 patches, then this small config's 4x
    assert VIDEO_MODELS[VIDEO_TEACHERS["wan2.2"].taehv_model].arch.latent_channels == 48


@torch.no_grad()
def test_the_hunyuan_teacher_scales_as_hunyuan_video_pipeline_does():
    assert "latents.to(self.vae.dtype) / self.vae.config.scaling_factor" in inspect.getsource(
        HunyuanVideoPipeline.__call__)
    teacher = small("hunyuan-video")
    assert teacher.vae.config.scaling_factor == 0.476986
    z = latents_for(teacher)
    assert (teacher.decode(z) - teacher.vae.decode(z / 0.476986).sample).abs().max() < 1e-5


@torch.no_grad()
def test_the_ltx_teacher_uses_ltx_pipelines_own_normalisation():
    teacher = small("ltx-video")
    vae = teacher.vae
    vae.latents_mean.copy_(torch.randn(8))
    vae.latents_std.copy_(torch.rand(8) + 0.5)
    vae.register_to_config(scaling_factor=0.7)
    teacher = type(teacher)(vae, "ltx-video")  # re-read the space after changing the statistics
    z = latents_for(teacher)
    raw = LTXPipeline._denormalize_latents(z, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
    assert (teacher.decode(z) - vae.decode(raw).sample).abs().max() < 1e-5
    video = torch.rand(1, 3, 9, 64, 64) * 2 - 1
    expected = LTXPipeline._normalize_latents(vae.encode(video).latent_dist.mean, vae.latents_mean, vae.latents_std,
                                              vae.config.scaling_factor)
    assert (teacher.encode(video) - expected).abs().max() < 1e-4


@torch.no_grad()
def test_the_cogvideox_teacher_decodes_as_cogvideox_pipeline_decode_latents():
    teacher = small("cogvideox")
    z = latents_for(teacher)
    stand_in = SimpleNamespace(vae=teacher.vae, vae_scaling_factor_image=teacher.vae.config.scaling_factor)
    frames = CogVideoXPipeline.decode_latents(stand_in, z.permute(0, 2, 1, 3, 4))  # it takes (B, T, C, H, W)
    assert (teacher.decode(z) - frames).abs().max() < 1e-5


def test_offline_loading_a_preset_is_one_sentence_naming_the_repo_and_how_to_pass_a_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TeacherLoadError) as error:
        load_video_teacher("wan2.1")
    message = str(error.value)
    assert "Wan-AI/Wan2.1-T2V-1.3B-Diffusers" in message and "hf download" in message and "--teacher" in message


def test_a_saved_small_vae_loads_from_its_folder_as_the_same_teacher(tmp_path):
    teacher = small("hunyuan-video")
    teacher.vae.save_pretrained(tmp_path / "vae")
    again = load_video_teacher(str(tmp_path), subfolder="vae")
    assert type(again.vae).__name__ == "AutoencoderKLHunyuanVideo" and again.latent_space == teacher.latent_space
    with pytest.raises(TeacherLoadError, match="no config.json"):
        load_video_teacher(str(tmp_path))


@torch.no_grad()
def test_cogvideox_takes_1_plus_8k_frames_and_other_counts_are_refused_up_front():
    from tinyae.errors import ConfigError
    from tinyae.models.video_teacher import check_clip_frames

    teacher = small("cogvideox")
    for frames, back in ((5, 8), (9, 9), (13, 16), (17, 17)):  # what diffusers' frame batching gives back
        clip = torch.rand(1, 3, frames, 16, 16) * 2 - 1
        assert teacher.decode(teacher.encode(clip)).shape[2] == back
    assert teacher.frame_multiple == 8
    check_clip_frames(teacher, 9, 4)
    with pytest.raises(ConfigError, match=r"data.frames 5 does not encode to whole latents: the teacher .* encodes "
                                          r"1 \+ 8k frames whole \(9, 17, 25"):
        check_clip_frames(teacher, 5, 4)
    check_clip_frames(small("wan2.1"), 5, 4)  # the others keep 1 + 4k


def test_a_hub_id_is_a_video_teacher_when_its_config_names_a_video_vae(tmp_path, monkeypatch):
    import huggingface_hub

    from tinyae.models import video_teacher

    (tmp_path / "config.json").write_text('{"_class_name": "AutoencoderKLWan"}')
    fetched = []

    def download(repo_id, filename, subfolder=None, **kwargs):
        fetched.append((repo_id, subfolder))
        if repo_id != "someone/my-wan-vae":
            raise OSError("not in the cache")
        return str(tmp_path / "config.json")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    video_teacher._hub_class_name.cache_clear()
    try:
        assert video_teacher.is_video_teacher("someone/my-wan-vae")
        assert fetched == [("someone/my-wan-vae", None)]
        with pytest.warns(UserWarning, match="taken for an image VAE"):
            assert not video_teacher.is_video_teacher("someone/uncached")
        assert not video_teacher.is_video_teacher("sdxl")  # an image preset never asks the Hub
        assert len(fetched) == 2
    finally:
        video_teacher._hub_class_name.cache_clear()
