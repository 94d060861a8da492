"""Tiny decoders in a real diffusers pipeline (built offline from small configs) and as live previews."""

import numpy as np
import pytest
import tiny_pipelines
import torch
from diffusers import AutoencoderTiny, DDIMScheduler, FluxPipeline, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image

from tinyae.config import StudentConfig
from tinyae.errors import ExportError
from tinyae.models.student import Student
from tinyae.models.tiny_autoencoder import diffusers_model
from tinyae.shipping.preview import PreviewCallback, load_preview_decoder, unpack_latents

STEPS = 4


def tiny_student(latent_channels: int = 4, seed: int = 0) -> Student:
    torch.manual_seed(seed)
    return Student(StudentConfig(latent_channels=latent_channels, encoder_widths=[16], decoder_widths=[16],
                                 encoder_blocks=[1, 1, 1, 1], decoder_blocks=[1, 1, 1, 1]))


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run") / "student"
    tiny_student().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pipe(student_dir):
    """StableDiffusionPipeline with a tiny UNet, and the student as its VAE (README: "Use it in diffusers")."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32)
    pipe = StableDiffusionPipeline(vae=AutoencoderTiny.from_pretrained(student_dir), text_encoder=None,
                                   tokenizer=None, unet=unet, scheduler=DDIMScheduler(clip_sample=False),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, callback=None) -> np.ndarray:
    embeds = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    return pipe(prompt_embeds=embeds, negative_prompt_embeds=torch.zeros_like(embeds), num_inference_steps=STEPS,
                generator=torch.Generator().manual_seed(0), output_type="np", callback_on_step_end=callback).images


def test_previews_fire_every_n_steps_and_leave_the_generation_unchanged(pipe, student_dir, tmp_path):
    baseline = generate(pipe)
    seen = []
    preview = PreviewCallback(load_preview_decoder(student_dir), every=2,
                              on_preview=lambda step, images: seen.append((step, images)), save_dir=tmp_path)
    with_previews = generate(pipe, preview)

    assert [step for step, _ in seen] == [1, 3]  # after the 2nd and 4th of 4 steps
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-0001-0.png", "step-0003-0.png"]
    for _, images in seen:
        assert len(images) == 1 and images[0].size == (64, 64) and images[0].mode == "RGB"
    assert baseline.shape == (1, 64, 64, 3) and np.array_equal(with_previews, baseline)
    # The last preview decodes the final latents with the same weights as pipe.vae: it is the output image.
    assert np.array_equal(np.asarray(seen[-1][1][0]), (baseline[0] * 255).round().astype(np.uint8))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "step-0003-0.png")), np.asarray(seen[-1][1][0]))


def test_callback_returns_the_kwargs_and_never_touches_the_latents(pipe, student_dir):
    preview = PreviewCallback(load_preview_decoder(student_dir), on_preview=lambda step, images: None)
    latents = torch.randn(2, 4, 8, 8)
    before = latents.clone()
    kwargs = {"latents": latents}
    assert preview(pipe, 0, 999, kwargs) is kwargs
    assert kwargs["latents"] is latents and torch.equal(latents, before)
    assert preview.tensor_inputs == ["latents"]  # pipelines read it off a PipelineCallback


def test_flux_packed_latents_are_unpacked_like_the_pipeline_does():
    decoder = diffusers_model(tiny_student(latent_channels=16, seed=2)).eval()
    latents = torch.randn(1, 16, 8, 12)  # a 64 x 96 image
    packed = FluxPipeline._pack_latents(latents, 1, 16, 8, 12)
    assert torch.equal(unpack_latents(packed, 64, 96), FluxPipeline._unpack_latents(packed, 64, 96, 8))
    assert torch.equal(unpack_latents(packed, 64, 96), latents)

    wide = PreviewCallback(decoder, on_preview=print, height=64, width=96)
    from_packed, from_grid = wide.decode(packed)[0], wide.decode(latents)[0]
    assert from_packed.size == (96, 64) and np.array_equal(np.asarray(from_packed), np.asarray(from_grid))

    square = torch.randn(1, 16, 8, 8)
    unsized = PreviewCallback(decoder, on_preview=print)
    assert torch.equal(unpack_latents(FluxPipeline._pack_latents(square, 1, 16, 8, 8)), square)
    assert unsized.decode(FluxPipeline._pack_latents(square, 1, 16, 8, 8))[0].size == (64, 64)
    with pytest.raises(ValueError, match="pass the image height and width"):
        unsized.decode(packed)


def test_preview_decoder_loads_any_local_layout_in_the_asked_dtype(student_dir, tmp_path):
    from tinyae.shipping.export import export_taesd

    export_taesd(Student.from_pretrained(student_dir), tmp_path, "sd")
    from_pair = load_preview_decoder(tmp_path, family="sd", dtype="fp16")
    from_folder = load_preview_decoder(student_dir)
    assert isinstance(from_pair, AutoencoderTiny) and from_pair.dtype == torch.float16
    assert not any(p.requires_grad for p in from_folder.parameters())
    for key, value in from_folder.state_dict().items():
        assert torch.equal(from_pair.state_dict()[key], value.half()), key


def test_preview_decoder_errors_are_one_clear_sentence(student_dir):
    with pytest.raises(ExportError, match="'madebyollin/taesdxl'.*hf download madebyollin/taesdxl --local-dir DIR"):
        load_preview_decoder(family="sdxl")  # the published TAESD, offline here
    with pytest.raises(ExportError, match="'someone/tiny-vae' from the Hugging Face Hub"):
        load_preview_decoder("someone/tiny-vae")
    with pytest.raises(ExportError, match="or a family"):
        load_preview_decoder()
    with pytest.raises(ExportError, match="4 latent channels but family 'flux' uses 16"):
        load_preview_decoder(student_dir, family="flux")
    with pytest.raises(ValueError, match="on_preview"):
        PreviewCallback(load_preview_decoder(student_dir))


def test_the_flux2_preview_decoder_is_the_shipped_taef2_and_serves_flux2_pipelines():
    decoder = load_preview_decoder(family="flux2")  # no download: the published pair ships with tinyae
    assert type(decoder).__name__ == "TinyAutoencoder" and decoder.config.latent_channels == 32
    assert torch.equal(decoder.bn.running_var, torch.ones(128)) and decoder.config.batch_norm_eps == 0.0
    tokens = torch.randn(1, 16, 128)  # FLUX.2's packed 128-channel tokens of a 64 x 64 image
    image = PreviewCallback(decoder, on_preview=print, height=64, width=64).decode(tokens)[0]
    assert image.size == (64, 64)


def test_families_without_a_published_diffusers_decoder_say_what_to_pass():
    with pytest.raises(ExportError, match="No published tiny decoder of family 'sana'"):
        load_preview_decoder(family="sana")


def test_a_student_saved_for_its_family_previews_for_it_without_being_told(tmp_path):
    tiny_pipelines.tiny_student("qwen-image").save_pretrained(tmp_path / "qwen", family="qwen-image")
    decoder = load_preview_decoder(tmp_path / "qwen")  # the folder's config names the family
    assert type(decoder).__name__ == "TinyAutoencoder" and decoder.config.latents_std == [1.0] * 16
