"""The TAEHV-layout video student: upstream's keys and numbers, the frame rule, streaming, diffusers' interface.

The references were computed by madebyollin/taehv's own taehv.py on seeded random weights
(tests/data/taehv-reference/README.md): `seeded_weights` below rebuilds those weights from the
key list, so the test needs neither upstream's code nor its files. Upstream works on NTCHW
frames in [0, 1], as the student's `*_frames01` methods do.
"""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tinyae.errors import ExportError
from tinyae.models.video_student import VIDEO_MODELS, StreamState, VideoArch, VideoStudent, run_parallel

REFERENCE = Path(__file__).resolve().parent / "data" / "taehv-reference"
REF = load_file(REFERENCE / "outputs.safetensors")
KEYS = json.loads((REFERENCE / "keys.json").read_text())
SEEDS = {"taew2_1": 0, "taew2_2": 1, "taecvx": 2, "taeltx_2": 3}  # the order make_reference.py ran them in


def seeded_weights(shapes: dict[str, list[int]], seed: int) -> dict[str, torch.Tensor]:
    """The reference weights: in sorted key order from one seeded generator, convs scaled by 1/sqrt(fan in)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(shapes):
        shape = shapes[key]
        scale = 1 / math.sqrt(shape[1] * shape[2] * shape[3]) if len(shape) == 4 else 0.1
        out[key] = torch.randn(shape, generator=g) * scale
    return out


def tiny(**overrides) -> VideoStudent:
    """A narrow student (same layout and keys, small widths) for cheap behaviour tests."""
    torch.manual_seed(0)
    arch = dict(encoder_width=8, decoder_widths=(16, 8, 8, 8)) | overrides
    return VideoStudent(**arch).eval()


@pytest.fixture(scope="module", params=list(SEEDS))
def published(request) -> tuple[str, VideoStudent]:
    name = request.param
    student = VideoStudent.published(name).eval()
    student.load_state_dict(seeded_weights(KEYS[name], SEEDS[name]), strict=True)
    return name, student


def test_the_state_dict_has_upstreams_keys_and_shapes_for_each_published_model(published):
    name, student = published
    assert {k: list(v.shape) for k, v in student.state_dict().items()} == KEYS[name]


def test_comfyui_finds_the_output_conv_and_the_latent_channels_where_it_looks():
    state = VideoStudent.published("taew2_2").state_dict()
    assert "decoder.22.bias" in state and state["decoder.1.weight"].shape[1] == 48
    assert state["decoder.22.bias"].shape == (12,)  # 3 x 2 x 2: pixel-shuffled by the patch


@torch.no_grad()
def test_encode_and_decode_match_upstream_taehv_within_1e_5(published):
    name, student = published
    latents = student.encode_frames01(REF[f"{name}/video"])
    assert (latents - REF[f"{name}/encode_video"]).abs().max() < 1e-5
    assert (student.encode_frames01(REF[f"{name}/video"], parallel=False) - latents).abs().max() < 1e-5
    for i, key in enumerate(k for k in REF if k.startswith(f"{name}/latents")):
        z = REF[key]
        count = key.removeprefix(f"{name}/latents")
        raw = REF[f"{name}/decoder(latents{count})"]
        for parallel in (True, False) if i == 0 else (True,):  # streaming once per model: it costs a loop per frame
            frames = student.decode_frames01(z, parallel=parallel)
            assert (frames.clamp(0, 1) - REF[f"{name}/decode_video(latents{count})"]).abs().max() < 1e-5
        # and before the clamp, which hides saturated pixels: upstream's decoder layers on their own
        assert (run_parallel(student.decoder, z) - raw).abs().max() < 1e-5
    roundtrip = student.decode_frames01(REF[f"{name}/encode_video"]).clamp(0, 1)
    assert (roundtrip - REF[f"{name}/decode_video(encode_video)"]).abs().max() < 1e-5


@pytest.mark.parametrize("frames, latents", [(1, 1), (5, 2), (9, 3), (8, 2)])
def test_1_plus_4k_frames_encode_to_1_plus_k_latents_and_t_latents_decode_to_4t_minus_3_frames(frames, latents):
    student = tiny()
    with torch.no_grad():
        z = student.encode(torch.zeros(1, 3, frames, 16, 16)).latents
        assert z.shape == (1, 16, latents, 2, 2)
        assert student.decode(z).sample.shape == (1, 3, 4 * latents - 3, 16, 16)
    assert student.arch.latent_frames(frames) == latents and student.arch.decoded_frames(latents) == 4 * latents - 3


def test_ltx_layout_is_8x_in_time_and_32x_in_space():
    arch = VIDEO_MODELS["taeltx_2"].arch
    assert (arch.time_downscale, arch.downscale, arch.latent_frames(17), arch.decoded_frames(3)) == (8, 32, 3, 17)


@torch.no_grad()
def test_streaming_decode_yields_the_parallel_frames_one_at_a_time():
    student = tiny(latent_channels=12, patch_size=2)
    z = torch.randn(1, 12, 4, 2, 2)
    parallel = student.decode(z).sample
    frames = list(student.decode_frames(z))
    assert len(frames) == 13 and frames[0].shape == (1, 3, 32, 32)
    assert (torch.stack(frames, 2) - parallel).abs().max() < 1e-5
    assert (student.decode(z, parallel=False).sample - parallel).abs().max() < 1e-5


@torch.no_grad()
def test_streaming_memory_does_not_grow_with_the_video():
    student = tiny()
    state = StreamState(student.decoder)  # what decode_frames keeps between frames
    sizes = []
    for length in (3, 12):
        state.memory.clear()
        for latent in torch.randn(1, length, 16, 2, 2).split(1, 1):
            list(state.push(latent))
        sizes.append(sum(v.numel() for v in state.memory.values()))
    assert sizes[0] == sizes[1] > 0


@torch.no_grad()
@pytest.mark.parametrize("layout", [{}, {"latent_channels": 12, "patch_size": 2}, {"keep_frames_for_even_latents": True},
                                    {"latent_channels": 8, "patch_size": 4, "encoder_time_downscale": (True,) * 3,
                                     "decoder_time_upscale": (True,) * 3}], ids=["taew2_1", "patch 2", "taecvx", "ltx"])
def test_decoding_in_chunks_gives_the_unchunked_frames_for_every_chunk_size_and_length(layout):
    student = tiny(**layout)
    for latents in (1, 5):
        z = torch.randn(2, student.arch.latent_channels, latents, 2, 3, generator=torch.Generator().manual_seed(latents))
        whole = student.decode(z).sample
        assert whole.shape[2] == student.arch.decoded_frames(latents)
        for chunk in (2, 3):
            chunked = student.decode(z, chunk_size=chunk).sample
            assert chunked.shape == whole.shape and (chunked - whole).abs().max() < 1e-5


@torch.no_grad()
def test_no_layer_takes_more_frames_than_the_chunk():
    student = tiny()
    widest = []
    hooks = [layer.register_forward_hook(lambda module, inputs, out: widest.append(inputs[0].shape[0]))
             for layer in student.decoder]
    list(student.stream_chunks01(torch.randn(1, 9, 16, 2, 2), 2))
    for hook in hooks:
        hook.remove()
    assert max(widest) == 2  # frames folded into the batch: N = 1 clip x at most 2 frames


@torch.no_grad()
def test_a_chunk_size_set_once_or_in_the_config_is_how_decode_runs(tmp_path):
    student = tiny()
    z = torch.randn(1, 16, 3, 2, 2)
    whole = student.decode(z).sample
    calls = []
    real = student.stream_chunks01
    student.stream_chunks01 = lambda z, chunk: calls.append(chunk) or real(z, chunk)
    student.enable_chunking(2)
    assert (student.decode(z).sample - whole).abs().max() < 1e-5 and calls == [2]
    student.disable_chunking()
    student.decode(z)
    assert calls == [2]
    tiny(decode_chunk_size=3).save_pretrained(tmp_path)
    assert VideoStudent.from_pretrained(tmp_path).decode_chunk_size == 3
    with pytest.raises(ExportError, match="at least 1 frame"):
        student.enable_chunking(0)


def test_the_diffusers_class_saves_and_loads_back_exactly(tmp_path):
    student = tiny(latent_channels=48, patch_size=2)
    student.save_pretrained(tmp_path)
    again = VideoStudent.from_pretrained(tmp_path)
    assert again.arch == student.arch
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), student.state_dict().values()))
    x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(again(x).sample, student(x).sample)


def test_a_layout_with_the_wrong_number_of_stages_is_refused_in_one_sentence():
    with pytest.raises(ExportError, match="3 encoder and 3 decoder stages"):
        VideoArch(decoder_widths=(64, 64))


@torch.no_grad()
def test_a_video_student_is_wan_pipelines_vae_and_decodes_its_live_previews():
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    vae = tiny()
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8,
                                        in_channels=16, out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32,
                                        num_layers=1, rope_max_seq_len=32)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler())
    previews = []

    def preview(pipe, step, timestep, kwargs):
        previews.append(vae.decode(kwargs["latents"]).sample)  # the latents the transformer sees, as they are
        return {}

    frames = pipe(prompt_embeds=torch.randn(1, 8, 32), negative_prompt_embeds=torch.randn(1, 8, 32), height=32,
                  width=32, num_frames=9, num_inference_steps=2, guidance_scale=1.0, output_type="pt",
                  callback_on_step_end=preview).frames
    assert frames.shape == (1, 9, 3, 32, 32)  # 9 frames -> 3 latents -> 9 frames, 8x space
    assert len(previews) == 2 and previews[-1].shape == (1, 3, 9, 32, 32)


# ------------------------------------------- layouts published since: taeh3, `_super`, LTX-2.3 (wide), previews
# References: tests/data/taehv-reference/layouts.safetensors, made by upstream taehv.py (main, and the
# 2026_03_11_taeltx23_wide branch for the wide decoder) from the same seeded weights; see the README there.

LAYOUTS = load_file(REFERENCE / "layouts.safetensors")
LAYOUT_SEEDS = {"taeh3": 4, "taew2_2_super": 5, "taeltx2_3_wide": 6}


def seeded(name: str, seed: int) -> VideoStudent:
    student = VideoStudent.published(name).eval()
    student.load_state_dict(seeded_weights(KEYS[name], seed), strict=True)
    return student


@pytest.mark.parametrize("name", ["taeh3", "taew2_2_super", "taehv1_5_super", "taeltx2_3", "taeltx2_3_wide"])
def test_each_newer_layout_has_upstreams_keys_and_shapes(name):
    assert {k: list(v.shape) for k, v in VideoStudent.published(name).state_dict().items()} == KEYS[name]


def test_a_super_decoder_has_about_twice_the_parameters_and_the_same_encoder():
    for name in ("taew2_2", "taehv1_5"):
        base, large = VideoStudent.published(name), VideoStudent.published(f"{name}_super")
        count = [sum(p.numel() for p in m.decoder.parameters()) for m in (base, large)]
        assert 1.8 < count[1] / count[0] < 2.1
        assert [p.shape for p in base.encoder.parameters()] == [p.shape for p in large.encoder.parameters()]


@torch.no_grad()
@pytest.mark.parametrize("name", list(LAYOUT_SEEDS))
def test_newer_layouts_encode_and_decode_as_upstream_within_1e_5(name):
    student, ref = seeded(name, LAYOUT_SEEDS[name]), {k.removeprefix(f"{name}/"): v for k, v in LAYOUTS.items()
                                                       if k.startswith(f"{name}/")}
    latents = student.encode_frames01(ref["video"])
    assert latents.shape == ref["encode_video"].shape and (latents - ref["encode_video"]).abs().max() < 1e-5
    assert (student.encode_frames01(ref["video"], parallel=False) - latents).abs().max() < 1e-5
    for key in (k for k in ref if k.startswith("latents")):
        expected = ref[f"decode_video({key})"]
        assert student.arch.decoded_frames(ref[key].shape[1]) == expected.shape[1]
        for frames in (student.decode_frames01(ref[key]), student.decode_frames01(ref[key], chunk_size=2)):
            assert frames.shape == expected.shape and (frames.clamp(0, 1) - expected).abs().max() < 1e-5
    assert (student.decode_frames01(latents).clamp(0, 1) - ref["decode_video(encode_video)"]).abs().max() < 1e-5


@torch.no_grad()
def test_h3_encodes_17_frame_chunks_to_5_latents_less_3_and_decodes_them_to_17_frames_less_12():
    arch = VIDEO_MODELS["taeh3"].arch
    assert [arch.latent_frames(f) for f in (1, 17, 18, 34)] == [2, 2, 7, 7]
    assert [arch.decoded_frames(t) for t in (2, 7, 12)] == [5, 22, 39]  # ComfyUI: (t - 2) // 5 * 17 + 5
    student = seeded("taeh3", LAYOUT_SEEDS["taeh3"])  # one latent: upstream pads its chunk with zero frames
    frames = student.decode_frames01(LAYOUTS["taeh3/latents1"])
    assert (frames.clamp(0, 1) - LAYOUTS["taeh3/decode_video(latents1)"]).abs().max() < 1e-5
    assert torch.equal(frames[:, 1:], torch.zeros_like(frames[:, 1:]))
    streamed = torch.stack(list(student.stream_frames01(LAYOUTS["taeh3/latents1"])), 1)
    assert streamed.shape == frames.shape and (streamed - frames).abs().max() < 1e-5


@torch.no_grad()
@pytest.mark.parametrize("name, switch", [("taew2_1", "time"), ("taew2_1", "space"), ("taeh3", "time"),
                                          ("taew2_2_super", "time"), ("taeltx2_3_wide", "space")])
def test_preview_decoders_give_upstreams_frames_for_its_load_time_switches(name, switch):
    key = next(k for k in LAYOUTS if k.startswith(f"{name}/preview_{switch}("))
    z = LAYOUTS[f"{name}/{key.split('(')[1].rstrip(')')}"]
    student = seeded(name, LAYOUT_SEEDS.get(name, SEEDS.get(name)))
    switches = dict(decoder_time_upscale=(False, False)) if switch == "time" else dict(
        decoder_space_upscale=(False, True, True))
    cheap = student.for_previews(**switches)
    frames = cheap.decode_frames01(z)
    assert frames.shape == LAYOUTS[key].shape and (frames.clamp(0, 1) - LAYOUTS[key]).abs().max() < 1e-5
    if switch == "time" and name != "taeh3":  # no time upscaling: T latents -> T frames
        assert frames.shape[1] == z.shape[1] == cheap.arch.decoded_frames(z.shape[1])


def test_a_preview_decoder_cannot_switch_stages_on_or_resize_a_super_decoder():
    with pytest.raises(ExportError, match="only switch stages off"):
        tiny().for_previews(decoder_time_upscale=(True, True, True))
    with pytest.raises(ExportError, match="switch off only time"):
        VideoStudent.published("taew2_2_super").for_previews(decoder_space_upscale=(False, True, True))


@torch.no_grad()
@pytest.mark.parametrize("layout", [dict(), dict(latent_channels=24, patch_size=2, h3_chunks=True),
                                    dict(decoder_variant="super", decoder_widths=(16, 8, 8, 8))])
@pytest.mark.parametrize("frames", [1, 6, 19])
def test_streaming_encode_yields_the_parallel_latents_within_1e_5(layout, frames):
    student = tiny(**layout)
    video = torch.rand(1, 3, frames, 32, 32, generator=torch.Generator().manual_seed(frames)) * 2 - 1
    whole = student.encode(video).latents
    streamed = torch.stack(list(student.encode_frames(iter(video.unbind(2)))), 2)
    assert whole.shape[2] == student.arch.latent_frames(frames)
    assert streamed.shape == whole.shape and (streamed - whole).abs().max() < 1e-5


@torch.no_grad()
@pytest.mark.parametrize("name", ["taeh3", "taew2_2_super", "taehv1_5_super", "lighttaehy1_5", "taeltx2_3_wide"])
def test_each_newer_layout_trains_through_diffusers_interface_and_saves_back_exactly(name, tmp_path):
    student = VideoStudent.published(name)
    arch, side = student.arch, 2 * student.arch.downscale
    z = student.encode(torch.zeros(1, 3, 5, side, side)).latents
    assert z.shape == (1, arch.latent_channels, arch.latent_frames(5), 2, 2)
    assert student.decode(z).sample.shape == (1, 3, arch.decoded_frames(z.shape[2]), side, side)
    student.save_pretrained(tmp_path)
    assert VideoStudent.from_pretrained(tmp_path).arch == arch


@pytest.mark.parametrize("layout", [dict(decoder_variant="super"), dict(decoder_variant="wide"),
                                    dict(latent_channels=24, patch_size=2, h3_chunks=True),
                                    dict(act_fn="leaky_relu", signed_output=True)])
def test_the_distill_step_trains_every_weight_of_each_newer_layout(layout):
    from tinyae.training.step import StudentStep  # what the distill loop runs a student through

    student = tiny(**layout).train()
    arch, side = student.arch, 2 * student.arch.downscale
    clips = torch.rand(1, 3, 17, side, side) * 2 - 1
    teacher_latents = torch.randn(1, arch.latent_channels, arch.latent_frames(17), 2, 2)
    latents, recon, round_trip = StudentStep(student, "both")(clips, teacher_latents, round_trip=True)
    assert latents.shape == teacher_latents.shape and recon.shape[2] == arch.decoded_frames(latents.shape[2])
    ((latents - teacher_latents).square().mean() + recon.square().mean() + round_trip.square().mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
