"""FLUX.2, Sana and Qwen-Image: each family's latent space is the one its own pipeline feeds its VAE.

Real diffusers VAE classes and pipeline classes are built offline from small configs
(tests/tiny_pipelines.py). The teacher's conversions are checked against the pipelines' own
code (their static helpers, their encode helpers and their decode at the end of a generation);
students are checked as `pipe.vae` and as live previews inside those pipelines.
"""

import json
import types

import numpy as np
import pytest
import torch
from diffusers import Flux2Pipeline, FluxPipeline, QwenImageImg2ImgPipeline, QwenImagePipeline
from tiny_pipelines import SIZE, VAES, generate, pipeline, tiny_student

from tinyae.config import TeacherConfig, load_recipe
from tinyae.errors import ConfigError, TeacherLoadError
from tinyae.models.families import FAMILIES as FAMILY_INFO
from tinyae.models.latent_space import LatentSpace, PatchNormSpace, PerChannelSpace, ScalarSpace, patchify, unpatchify
from tinyae.models.presets import TEACHERS
from tinyae.models.teacher import Teacher, build_teacher, guess_family, load_teacher, resolve_space
from tinyae.models.tiny_autoencoder import TinyAutoencoder, diffusers_model
from tinyae.shipping.export import export_student
from tinyae.shipping.preview import PreviewCallback, unpack_latents
from tinyae.training.loop import distill
from tinyae.training.step import build_student

FAMILIES = ["flux2", "sana", "qwen-image"]
SPACE_KIND = {"flux2": PatchNormSpace, "sana": ScalarSpace, "qwen-image": PerChannelSpace}


@pytest.fixture(scope="module")
def vae_dirs(tmp_path_factory):
    """Each family's small VAE saved as a diffusers folder, as a user's fine-tuned VAE would be."""
    root = tmp_path_factory.mktemp("vaes")
    for family, build in VAES.items():
        build().save_pretrained(root / family)
    return root


def images(n: int = 2, size: int = SIZE) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(3)) * 2 - 1


def final_latents(family: str, pipe) -> tuple[np.ndarray, torch.Tensor]:
    """A generation's output image and the latents the pipeline decoded it from (read at its last step)."""
    seen = {}

    def grab(pipeline, step, timestep, kwargs):
        seen["latents"] = kwargs["latents"].clone()
        return kwargs

    return generate(family, pipe, grab, output_type="pt"), seen["latents"]


# ---------------------------------------------------------------- the spaces, against the pipelines' code


def test_patchify_is_flux2s_own_and_packed_tokens_unpack_like_every_pipeline_packs_them():
    raw = torch.randn(2, 32, 8, 12)
    assert torch.equal(patchify(raw), Flux2Pipeline._patchify_latents(raw))
    assert torch.equal(unpatchify(patchify(raw)), raw)
    assert torch.equal(Flux2Pipeline._unpatchify_latents(patchify(raw)), raw)
    # FLUX.2 patchifies, then packs (B, C*4, h/2, w/2) into row-major tokens: the same tokens FLUX.1 and Qwen-Image make.
    tokens = Flux2Pipeline._pack_latents(patchify(raw))
    assert torch.equal(tokens, FluxPipeline._pack_latents(raw, 2, 32, 8, 12))
    assert torch.equal(tokens, QwenImagePipeline._pack_latents(raw, 2, 32, 8, 12))
    assert torch.equal(unpack_latents(tokens, 64, 96), raw)


def test_flux2_teacher_encodes_to_the_normalised_latent_flux2pipeline_makes_unpatchified():
    teacher = load_teacher_for("flux2")
    x = images()
    pipeline_latents = Flux2Pipeline._encode_vae_image(
        types.SimpleNamespace(vae=teacher.vae, _patchify_latents=Flux2Pipeline._patchify_latents), x, None)
    z = teacher.encode(x)
    assert z.shape == (2, 32, 8, 8) and pipeline_latents.shape == (2, 128, 4, 4)
    assert torch.allclose(patchify(z), pipeline_latents, atol=1e-5)
    raw = teacher.vae.encode(x).latent_dist.mean
    assert torch.allclose(teacher.latent_space.to_raw(z), raw, atol=1e-5)


def test_qwen_image_teacher_encodes_like_the_img2img_pipeline_on_one_frame():
    teacher = load_teacher_for("qwen-image")
    x = images()
    pipeline_latents = QwenImageImg2ImgPipeline._encode_vae_image(
        types.SimpleNamespace(vae=teacher.vae), x[:, :, None], torch.Generator().manual_seed(5))
    z = teacher.encode(x, sample=True, generator=torch.Generator().manual_seed(5))
    assert pipeline_latents.shape == (2, 16, 1, 8, 8)
    assert torch.allclose(z, pipeline_latents[:, :, 0], atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_teacher_decodes_a_generations_latents_as_the_pipeline_itself_does(family):
    """What the pipeline hands its callback at the last step, unpacked and decoded by the teacher, is its image."""
    teacher = load_teacher_for(family)
    image, latents = final_latents(family, pipeline(family, teacher.vae))
    z = unpack_latents(latents, SIZE, SIZE) if latents.ndim == 3 else latents
    assert z.shape[1:] == (teacher.latent_channels, SIZE // teacher.downscale, SIZE // teacher.downscale)
    ours = ((teacher.decode(z) + 1) / 2).clamp(0, 1)
    assert torch.allclose(ours, image, atol=1e-4), (ours - image).abs().max()


def load_teacher_for(family: str) -> Teacher:
    """A teacher around the family's small VAE, its space read from the VAE as for any Hub id or folder."""
    vae = VAES[family]()
    space = resolve_space(vae, TeacherConfig(name=family), None)
    return Teacher(vae, name=family, family=guess_family(vae, space), latent_space=space)


# ---------------------------------------------------------------- teachers: any class, from its config


@pytest.mark.parametrize("family", FAMILIES)
def test_a_vae_folder_of_each_class_loads_with_the_space_and_family_its_class_and_config_give(family, vae_dirs):
    teacher = load_teacher(str(vae_dirs / family))
    assert isinstance(teacher.latent_space, SPACE_KIND[family]) and teacher.family == family
    assert (teacher.latent_channels, teacher.downscale) == ({"flux2": 32, "sana": 32, "qwen-image": 16}[family],
                                                           {"flux2": 8, "sana": 32, "qwen-image": 8}[family])
    config = teacher.vae.config
    if family == "qwen-image":
        assert teacher.latent_space == PerChannelSpace(config.latents_mean, config.latents_std)
    elif family == "sana":
        assert teacher.latent_space == ScalarSpace(0.41407) and teacher.scaling_factor == 0.41407
    else:
        assert teacher.latent_space.mean == tuple(teacher.vae.bn.running_mean.double().tolist())
        assert teacher.scaling_factor is None  # not a scalar space
    x = images(1)
    assert torch.allclose(teacher.latent_space.to_raw(teacher.encode(x)), teacher.encode_raw(x), atol=1e-4)
    assert LatentSpace.from_dict(teacher.latent_space.to_dict()) == teacher.latent_space  # what run.json records


def test_scalar_overrides_are_refused_where_the_space_is_not_scalar(vae_dirs):
    with pytest.raises(TeacherLoadError, match="batch-norm"):
        load_teacher(TeacherConfig(name=str(vae_dirs / "flux2"), scaling_factor=0.5))
    with pytest.raises(TeacherLoadError, match="latents_mean"):
        load_teacher(TeacherConfig(name=str(vae_dirs / "qwen-image"), shift_factor=0.1))
    scaled = load_teacher(TeacherConfig(name=str(vae_dirs / "qwen-image"), scaling_factor=0.5))
    assert scaled.latent_space.scaling_factor == 0.5


@pytest.mark.parametrize("name, kind, channels, downscale, min_params", [
    ("flux2", PatchNormSpace, 32, 8, 80e6), ("sana", ScalarSpace, 32, 32, 300e6),
    ("qwen-image", PerChannelSpace, 16, 8, 120e6),
])
def test_new_presets_build_their_real_architecture_without_weights(name, kind, channels, downscale, min_params):
    teacher = build_teacher(name)
    assert isinstance(teacher.latent_space, kind) and "random weights" in teacher.name
    assert (teacher.latent_channels, teacher.downscale, teacher.family) == (channels, downscale, TEACHERS[name].family)
    assert sum(p.numel() for p in teacher.vae.parameters()) > min_params
    z = teacher.encode(images(1, 32 if downscale == 8 else 64))
    assert z.shape[1] == channels and teacher.decode(z).shape[-1] == z.shape[-1] * downscale


@pytest.mark.parametrize("name, repo", [("flux2", "black-forest-labs/FLUX.2-klein-4B"),
                                        ("flux2-dev", "black-forest-labs/FLUX.2-dev"),
                                        ("sana", "mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers"),
                                        ("qwen-image", "Qwen/Qwen-Image")])
def test_offline_or_gated_presets_fail_in_one_sentence_naming_the_repo(name, repo, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TeacherLoadError) as info:
        load_teacher(name)
    message = str(info.value)
    assert repo in message and "gated" in message and "--teacher DIR" in message and "\n" not in message


# ---------------------------------------------------------------- students inside the pipelines


@pytest.mark.parametrize("pipeline_name", FAMILIES + ["flux2-dev"])
def test_a_student_is_the_pipelines_vae_and_its_preview_is_the_output_image(pipeline_name, tmp_path):
    family = pipeline_name.removesuffix("-dev")
    tiny_student(family).save_pretrained(tmp_path / "student", family=family)
    vae = TinyAutoencoder.from_pretrained(tmp_path / "student")  # what users load, from the folder
    pipe = pipeline(pipeline_name, vae)
    baseline = generate(pipeline_name, pipe)
    seen = []
    previews = PreviewCallback(vae, on_preview=lambda step, ims: seen.append((step, ims)), height=SIZE, width=SIZE)
    assert np.array_equal(generate(pipeline_name, pipe, previews), baseline)  # previews only read the latents
    assert [step for step, _ in seen] == [0, 1] and seen[-1][1][0].size == (SIZE, SIZE)
    # The last preview decodes the final latents with pipe.vae's weights: it is the output image.
    assert np.array_equal(np.asarray(seen[-1][1][0]), (baseline[0] * 255).round().astype(np.uint8))


def test_what_each_family_pipeline_reads_on_pipe_vae_survives_saving(tmp_path):
    for family in FAMILIES:
        tiny_student(family).save_pretrained(tmp_path / family, family=family)
    flux2 = TinyAutoencoder.from_pretrained(tmp_path / "flux2")
    assert torch.equal(flux2.bn.running_mean, torch.zeros(128)) and torch.equal(flux2.bn.running_var, torch.ones(128))
    assert flux2.config.batch_norm_eps == 0.0 and len(flux2.config.block_out_channels) == 4
    qwen = TinyAutoencoder.from_pretrained(tmp_path / "qwen-image").to(torch.float16)
    assert 2 ** len(qwen.temperal_downsample) == 8 and qwen.config.z_dim == 16
    assert qwen.config.latents_mean == [0.0] * 16 and qwen.config.latents_std == [1.0] * 16
    assert qwen.decode(torch.zeros(1, 16, 1, 4, 4, dtype=torch.float16)).sample.shape == (1, 3, 1, 32, 32)
    sana = TinyAutoencoder.from_pretrained(tmp_path / "sana")
    assert 2 ** (len(sana.config.encoder_block_out_channels) - 1) == 32 and sana.config.scaling_factor == 1.0
    # A student AutoencoderTiny can hold and whose pipelines accept it stays an AutoencoderTiny.
    assert type(diffusers_model(tiny_student("qwen-image"))).__name__ == "AutoencoderTiny"


# ---------------------------------------------------------------- distillation, end to end


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_a_smoke_distillation_gives_a_student_that_previews_inside_the_familys_pipeline(family, vae_dirs, photos,
                                                                                      tmp_path):
    size = 64 if family == "sana" else 32  # crops must divide into the teacher's 1/32 or 1/8 latents
    stages = 6 if family == "sana" else 4
    recipe = load_recipe("smoke", {
        "teacher": {"name": str(vae_dirs / family)},
        "student": {"encoder_widths": [8], "decoder_widths": [8], "encoder_blocks": [1, 1, 1, 1],
                    "decoder_blocks": [1] * stages, **({"encoder_stem": [8, 8]} if family == "sana" else {})},
        "data": {"path": str(photos), "resolution": size, "final_resolution": size, "final_steps": 0, "holdout": 2},
        "loss": {"lpips_weight": 0.1, "adv_weight": 0.1, "adv_start": 1, "disc_width": 8},
        "train": {"steps": 2, "batch_size": 2, "log_every": 1, "sample_every": 2, "checkpoint_every": 2,
                  "output_dir": str(tmp_path / "run"), "log_with": None},
    })
    out = distill(recipe)
    run = json.loads((out / "run.json").read_text())
    assert run["family"] == family and LatentSpace.from_dict(run["latent_space"]) == load_teacher(
        str(vae_dirs / family)).latent_space
    config = json.loads((out / "student" / "config.json").read_text())
    assert config["_class_name"] == "TinyAutoencoder" and config["family"] == family
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2

    vae = TinyAutoencoder.from_pretrained(out / "student")
    pipe = pipeline(family, vae)
    seen = []
    image = generate(family, pipe, PreviewCallback(vae, on_preview=lambda step, ims: seen.append(ims)))
    assert np.array_equal(np.asarray(seen[-1][0]), (image[0] * 255).round().astype(np.uint8))
    if family != "qwen-image":  # and the TAESD pair, named for no client as the slim layout is not the published one
        with pytest.warns(UserWarning, match="layout that ComfyUI, Forge and taesd.py build"):
            exported = export_student(out, to="taesd", out=tmp_path / "pair")
        prefix = f"{FAMILY_INFO[family].prefix}-custom"
        assert sorted(p.name for p in exported.iterdir()) == sorted(
            f"{prefix}_{role}.{ext}" for role in ("encoder", "decoder") for ext in ("pth", "safetensors"))


def test_crops_that_do_not_divide_into_the_teachers_latents_are_refused_before_training(vae_dirs):
    recipe = load_recipe("smoke", {"teacher": {"name": str(vae_dirs / "sana")},
                                   "data": {"resolution": 48, "final_resolution": 64}})
    with pytest.raises(ConfigError, match="multiples of 32"):
        build_student(recipe, load_teacher(recipe.teacher))


def test_flux2_crops_must_tile_into_2x2_latent_patches(vae_dirs):
    recipe = load_recipe("smoke", {"teacher": {"name": str(vae_dirs / "flux2")},
                                   "data": {"resolution": 40, "final_resolution": 64}})
    with pytest.raises(ConfigError, match="multiples of 16"):
        build_student(recipe, load_teacher(recipe.teacher))
