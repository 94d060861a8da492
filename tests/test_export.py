"""Export formats and importing them back: keys, dtypes, file names, exact round trips, clear refusals."""

import json
import warnings
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderTiny
from safetensors.torch import load_file, save_file
from tiny_pipelines import tiny_student
from torch import nn

from tinyae.cli import main as tinyae_cli
from tinyae.config import StudentConfig
from tinyae.data.images import center_crop, load_rgb
from tinyae.errors import ExportError
from tinyae.models.formats import FAMILIES, load_student
from tinyae.models.student import Student
from tinyae.models.tiny_autoencoder import TinyAutoencoder
from tinyae.models.variants import resolve_arch
from tinyae.shipping.export import export_all, export_diffusers, export_student, export_taesd

# Small test students are not in the layouts ComfyUI builds; the dedicated test checks that warning.
pytestmark = pytest.mark.filterwarnings("ignore:.*layout that ComfyUI, Forge and taesd.py build")

ROOT = Path(__file__).resolve().parent.parent


def make_student(config: StudentConfig, seed: int = 0) -> Student:
    """Random weights, perturbed so every tensor (biases too) carries information."""
    torch.manual_seed(seed)
    student = Student(config)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return student


def assert_same_weights(a: Student, b: Student) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype == torch.float32, key
        assert torch.equal(sa[key], sb[key]), key


@pytest.fixture
def student(small_student_config):
    return make_student(small_student_config)


@pytest.fixture
def student16(small_student_config):
    return make_student(StudentConfig(**{**small_student_config.__dict__, "latent_channels": 16}), seed=1)


# ---------------------------------------------------------------- formats on disk


@pytest.mark.parametrize("family", [name for name, info in FAMILIES.items() if info.prefix])
def test_taesd_pair_has_the_family_names_and_bare_sequential_keys(family, student, student16, tmp_path):
    info = FAMILIES[family]
    model = make_student(resolve_arch(StudentConfig(variant=info.variant, latent_channels=info.latent_channels)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the family's own layout: nothing to warn about
        paths = export_taesd(model, tmp_path, family)
    prefix = {"sd": "taesd", "sdxl": "taesdxl", "sd3": "taesd3", "flux": "taef1", "flux2": "taef2",
              "sana": "taesana"}[family]
    assert sorted(p.name for p in paths) == sorted(
        f"{prefix}_{role}.{ext}" for role in ("encoder", "decoder") for ext in ("pth", "safetensors"))

    state = model.state_dict()
    encoder = load_file(tmp_path / f"{prefix}_encoder.safetensors")
    decoder = load_file(tmp_path / f"{prefix}_decoder.safetensors")
    assert set(encoder) == {k.removeprefix("encoder.layers.") for k in state if k.startswith("encoder.")}
    # The original decoder starts with a Clamp: every index is the diffusers one plus one.
    assert "0.weight" not in decoder and decoder["1.weight"].shape[1] == model.latent_channels
    for key in (k for k in state if k.startswith("decoder.")):
        index, rest = key.removeprefix("decoder.layers.").split(".", 1)
        assert torch.equal(decoder[f"{int(index) + 1}.{rest}"], state[key])
    assert_same_weights(load_student(tmp_path, family=family), model)  # and back, layout read off the tensors
    # The .pth twins hold the same tensors and load without unpickling code.
    assert torch.load(tmp_path / f"{prefix}_encoder.pth", weights_only=True).keys() == encoder.keys()
    pth_decoder = torch.load(tmp_path / f"{prefix}_decoder.pth", weights_only=True)
    assert all(torch.equal(pth_decoder[k], decoder[k]) for k in decoder)


def test_fp16_exports_store_half_precision(student, tmp_path):
    export_taesd(student, tmp_path / "vae_approx", "sdxl", dtype=torch.float16)
    assert {v.dtype for v in load_file(tmp_path / "vae_approx" / "taesdxl-custom_decoder.safetensors").values()} == {
        torch.float16}
    assert {v.dtype for v in torch.load(tmp_path / "vae_approx" / "taesdxl-custom_encoder.pth").values()} == {torch.float16}

    export_diffusers(student, tmp_path / "diffusers", fp16_variant=True)
    main = load_file(tmp_path / "diffusers" / "diffusion_pytorch_model.safetensors")
    half = load_file(tmp_path / "diffusers" / "diffusion_pytorch_model.fp16.safetensors")
    assert {v.dtype for v in main.values()} == {torch.float32} and {v.dtype for v in half.values()} == {torch.float16}
    model = AutoencoderTiny.from_pretrained(tmp_path / "diffusers", variant="fp16", torch_dtype=torch.float16)
    for key, value in model.state_dict().items():
        assert value.dtype == torch.float16 and torch.equal(value, student.state_dict()[key].half()), key


def test_export_all_writes_one_folder_for_every_consumer(student, tmp_path):
    export_all(student, tmp_path / "out", "sd", dtype=torch.float16)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.json", "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors",
        "taesd-custom_decoder.pth", "taesd-custom_decoder.safetensors", "taesd-custom_encoder.pth",
        "taesd-custom_encoder.safetensors"]  # the small test student's pair: a name no client picks up
    assert_same_weights(load_student(tmp_path / "out"), student)  # the fp32 diffusers weights win


def test_fp16_overflow_is_refused_not_written_as_inf(student, tmp_path):
    with torch.no_grad():
        student.decoder.layers[0].bias[0] = 1e6
    with pytest.raises(ExportError, match="overflows"):
        export_taesd(student, tmp_path / "out", "sd", dtype=torch.float16)
    assert not any((tmp_path / "out").glob("taesd_*"))


# ---------------------------------------------------------------- round trips


def test_student_to_taesd_pair_to_student_is_exact(student, tmp_path):
    export_taesd(student, tmp_path, "sd")
    for path in (tmp_path, tmp_path / "taesd-custom_encoder.pth", tmp_path / "taesd-custom_decoder.safetensors",
                 tmp_path / "taesd-custom"):
        loaded = load_student(path)
        assert loaded.arch.encoder_blocks == (1, 1, 1, 1) and loaded.arch.encoder_widths == (16,) * 4
        assert_same_weights(loaded, student)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), student(x))


def test_student_to_diffusers_to_student_is_exact(student, tmp_path):
    student.save_pretrained(tmp_path / "student")
    assert_same_weights(Student.from_pretrained(tmp_path / "student"), student)
    assert_same_weights(load_student(tmp_path / "student"), student)


def test_load_student_takes_a_taesd_pair_and_a_checkpoint_where_from_pretrained_takes_diffusers_folders(
        student, tmp_path):
    export_taesd(student, tmp_path / "comfy", "sdxl")
    assert_same_weights(load_student(tmp_path / "comfy", family="sdxl"), student)
    with pytest.raises(ExportError, match="load_student reads TAESD pairs"):
        Student.from_pretrained(tmp_path / "comfy")
    student.save_pretrained(tmp_path / "checkpoint-10" / "student_ema")
    assert_same_weights(load_student(tmp_path / "checkpoint-10"), student)


def test_default_taesd_architecture_guessed_from_the_tensors(tmp_path):
    """Published TAESD widths and blocks (64, [1,3,3,3] / [3,3,3,1]); 16 latent channels as taef1."""
    model = make_student(StudentConfig(latent_channels=16))
    export_taesd(model, tmp_path, "flux")
    loaded = load_student(tmp_path)
    assert (loaded.latent_channels, loaded.arch.encoder_widths, loaded.arch.decoder_widths) == (16, (64,) * 4, (64,) * 4)
    assert (loaded.arch.encoder_blocks, loaded.arch.decoder_blocks) == ((1, 3, 3, 3), (3, 3, 3, 1))
    assert_same_weights(loaded, model)


# ---------------------------------------------------------------- the documented TAESD layout, rebuilt here


def conv(n_in, n_out, **kwargs):
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.conv = nn.Sequential(conv(n, n), nn.ReLU(), conv(n, n), nn.ReLU(), conv(n, n))
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x):
        return self.fuse(self.conv(x) + self.skip(x))


def reference_encoder(latent_channels):
    return nn.Sequential(
        conv(3, 64), Block(64),
        conv(64, 64, stride=2, bias=False), Block(64), Block(64), Block(64),
        conv(64, 64, stride=2, bias=False), Block(64), Block(64), Block(64),
        conv(64, 64, stride=2, bias=False), Block(64), Block(64), Block(64),
        conv(64, latent_channels),
    )


def reference_decoder(latent_channels):
    return nn.Sequential(
        Clamp(), conv(latent_channels, 64), nn.ReLU(),
        Block(64), Block(64), Block(64), nn.Upsample(scale_factor=2), conv(64, 64, bias=False),
        Block(64), Block(64), Block(64), nn.Upsample(scale_factor=2), conv(64, 64, bias=False),
        Block(64), Block(64), Block(64), nn.Upsample(scale_factor=2), conv(64, 64, bias=False),
        Block(64), conv(64, 3),
    )


def test_taesd_pair_runs_in_a_plain_sequential_like_autoencoder_tiny(photos, tmp_path):
    model = make_student(StudentConfig(latent_channels=4))
    export_all(model, tmp_path / "out", "sd")
    encoder, decoder = reference_encoder(4).eval(), reference_decoder(4).eval()
    encoder.load_state_dict(torch.load(tmp_path / "out" / "taesd_encoder.pth", weights_only=True), strict=True)
    decoder.load_state_dict(load_file(tmp_path / "out" / "taesd_decoder.safetensors"), strict=True)
    tiny = AutoencoderTiny.from_pretrained(tmp_path / "out").eval()

    image = center_crop(load_rgb(photos / "astronaut.png"), 64)[None]  # [-1, 1]
    with torch.no_grad():
        latents = tiny.encode(image).latents
        reference_latents = encoder(image.add(1).div(2))  # the original works in [0, 1]
        decoded = tiny.decode(latents).sample
        reference_decoded = decoder(latents)
    assert latents.shape == (1, 4, 8, 8) and latents.std() > 1e-3
    assert torch.allclose(reference_latents, latents, atol=1e-5)
    assert torch.allclose(reference_decoded, decoded.add(1).div(2), atol=1e-5)


# ---------------------------------------------------------------- refusals


def test_existing_targets_are_refused_and_left_untouched(student, tmp_path):
    target = tmp_path / "student"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists"):
        export_diffusers(student, target)
    with pytest.raises(ExportError, match="already exists"):
        export_all(student, target, "sd")
    assert [p.name for p in target.iterdir()] == ["notes.txt"]

    comfy = tmp_path / "vae_approx"
    comfy.mkdir()
    (comfy / "taesd_decoder.pth").write_bytes(b"someone else's")
    (comfy / "taef1_decoder.pth").write_bytes(b"another model")
    published = make_student(resolve_arch(StudentConfig(latent_channels=4)))  # the layout ComfyUI builds
    with pytest.raises(ExportError, match="taesd_decoder.pth' already exists"):
        export_taesd(published, comfy, "sd")
    assert sorted(p.name for p in comfy.iterdir()) == ["taef1_decoder.pth", "taesd_decoder.pth"]
    assert (comfy / "taesd_decoder.pth").read_bytes() == b"someone else's"

    export_taesd(published, comfy, "sd", overwrite=True)  # asked: replaced, neighbours kept
    assert (comfy / "taef1_decoder.pth").read_bytes() == b"another model"
    assert_same_weights(load_student(comfy, family="sd"), published)
    export_diffusers(student, target, overwrite=True)  # replaces what it writes, keeps the rest
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors",
                                                        "notes.txt"]


@pytest.mark.parametrize("to", ["all", "diffusers"])
def test_overwrite_replaces_only_the_files_the_export_writes(student, tmp_path, to):
    student.save_pretrained(tmp_path / "student")
    comfy = tmp_path / "vae_approx"
    comfy.mkdir()
    (comfy / "taef1_encoder.pth").write_bytes(b"another model")
    (comfy / "readme.txt").write_text("mine")
    (comfy / "config.json").write_text("{}")
    (comfy / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"a stale fp16 variant of earlier weights")
    tinyae_cli(["export", "--student", str(tmp_path / "student"), "--to", to, "--family", "sd", "--out", str(comfy),
                "--overwrite"])
    assert (comfy / "taef1_encoder.pth").read_bytes() == b"another model"
    assert (comfy / "readme.txt").read_text() == "mine"
    assert not (comfy / "diffusion_pytorch_model.fp16.safetensors").exists()  # would load the earlier weights
    assert_same_weights(Student.from_pretrained(comfy), student)
    assert (to == "all") == any(comfy.glob("taesd*_encoder.safetensors"))  # off-layout pairs get a size suffix
    assert not [p.name for p in comfy.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_family_must_match_the_latent_channels(student, tmp_path):
    with pytest.raises(ExportError, match="4 latent channels but family 'flux' uses 16"):
        export_taesd(student, tmp_path, "flux")
    with pytest.raises(ExportError, match="Unknown family 'sd2'"):
        export_taesd(student, tmp_path, "sd2")
    assert not any(tmp_path.iterdir())


def flux2_style_pair(folder: Path) -> Path:
    """The FLUX.2 TAESD variant: blocks with a GroupNorm 'pool' branch (written here from its documented layout)."""
    class PoolBlock(Block):
        def __init__(self, n):
            super().__init__(n)
            self.pool = nn.Sequential(nn.Conv2d(n, 4 * n, 1, bias=False), nn.GroupNorm(4, 4 * n), nn.ReLU(),
                                      nn.Conv2d(4 * n, n, 1, bias=False))

    encoder = nn.Sequential(conv(3, 8), Block(8), conv(8, 8, stride=2, bias=False), PoolBlock(8), conv(8, 32))
    decoder = nn.Sequential(Clamp(), conv(32, 8), nn.ReLU(), PoolBlock(8), nn.Upsample(scale_factor=2),
                            conv(8, 8, bias=False), Block(8), conv(8, 3))
    torch.save(encoder.state_dict(), folder / "taef2_encoder.pth")
    torch.save(decoder.state_dict(), folder / "taef2_decoder.pth")
    return folder / "taef2_encoder.pth"


def test_a_flux2_style_pair_reads_as_a_pool_student(tmp_path):
    student = load_student(flux2_style_pair(tmp_path))
    assert student.arch.pool and student.arch.encoder_blocks == (1, 1) and student.latent_channels == 32


def test_a_pair_in_a_layout_clients_do_not_build_is_written_under_a_name_no_client_picks_up(student, tmp_path):
    """ComfyUI lists any `taef2_decoder*` in vae_approx and builds the published layout for it: a nano student
    under that name would crash every FLUX.2 sampling with previews, so its pair is `taef2-nano_*`."""
    nano = make_student(resolve_arch(StudentConfig(variant="flux_2", size="nano", latent_channels=32)))
    with pytest.warns(UserWarning, match="written as taef2-nano_\\*, a name no client picks up"):
        export_taesd(nano, tmp_path / "vae_approx", "flux2")
    names = sorted(p.name for p in (tmp_path / "vae_approx").iterdir())
    assert names == ["taef2-nano_decoder.pth", "taef2-nano_decoder.safetensors", "taef2-nano_encoder.pth",
                     "taef2-nano_encoder.safetensors"]
    assert not any(name.startswith(("taef2_decoder", "taef2_encoder")) for name in names)  # ComfyUI's match
    assert_same_weights(load_student(tmp_path / "vae_approx", family="flux2"), nano)  # tinyae reads it back
    assert load_student(tmp_path / "vae_approx" / "taef2-nano_decoder.pth").family == "flux2"

    with pytest.warns(UserWarning, match="written as taesd-custom_"):  # widths of no registered size
        export_taesd(student, tmp_path / "custom", "sd")
    assert_same_weights(load_student(tmp_path / "custom"), student)


def test_unknown_layouts_fail_with_a_sentence(student, tmp_path):
    vae_keys = {"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3)}
    save_file(vae_keys, tmp_path / "big_encoder.safetensors")
    save_file(vae_keys, tmp_path / "big_decoder.safetensors")
    with pytest.raises(ExportError, match="is not a TAESD file: key 'encoder.conv_in.weight'"):
        load_student(tmp_path / "big_encoder.safetensors")

    export_taesd(student, tmp_path / "swapped", "sd")
    swapped = {role: tmp_path / "swapped" / f"taesd-custom_{role}.safetensors" for role in ("encoder", "decoder")}
    (tmp_path / "swapped" / "taesd-custom_encoder.pth").unlink()
    swapped["encoder"].rename(tmp_path / "swapped" / "x.safetensors")
    swapped["decoder"].rename(swapped["encoder"])
    (tmp_path / "swapped" / "x.safetensors").rename(swapped["decoder"])
    with pytest.raises(ExportError, match="not 3 \\(RGB\\): is it a decoder"):
        load_student(tmp_path / "swapped")


def test_pickles_that_need_code_are_refused(tmp_path):
    torch.save(reference_encoder(4), tmp_path / "taesd_encoder.pth")  # a whole pickled module, not a state dict
    torch.save(reference_decoder(4).state_dict(), tmp_path / "taesd_decoder.pth")
    with pytest.raises(ExportError, match="weights_only=True so they cannot run code"):
        load_student(tmp_path)


def test_missing_or_ambiguous_pairs_say_what_to_pass(student, student16, tmp_path, capsys):
    export_taesd(student, tmp_path, "sd")
    export_taesd(student16, tmp_path, "flux")
    with pytest.raises(ExportError, match="several TAESD pairs \\(taef1-custom, taesd-custom\\); pass a family"):
        load_student(tmp_path)
    assert load_student(tmp_path, family="flux").latent_channels == 16
    for path in tmp_path.glob("taesd-custom_decoder.*"):
        path.unlink()
    with pytest.raises(ExportError, match="No taesd-custom_decoder.safetensors or .pth"):
        load_student(tmp_path, family="sd")
    with pytest.raises(ExportError, match="No student weights at"):
        load_student(tmp_path / "nothing" / "here")
    with pytest.raises(ExportError, match="'madebyollin/taesdxl' from the Hugging Face Hub.*--local-dir DIR"):
        load_student("madebyollin/taesdxl")  # a published TAESD to fine-tune from; the Hub is offline here
    with pytest.raises(SystemExit):
        tinyae_cli(["export", "--checkpoint", str(tmp_path), "--to", "taesd", "--family", "sd"])
    assert "no student_ema/ folder" in capsys.readouterr().err


# ---------------------------------------------------------------- the command line (docs/shipping.md "Use it in ComfyUI / Forge")


def test_export_script_drops_a_pair_into_comfyui(tmp_path):
    student = make_student(resolve_arch(StudentConfig(latent_channels=4)))  # the layout ComfyUI builds
    student.save_pretrained(tmp_path / "runs" / "sd" / "student")
    (tmp_path / "runs" / "sd" / "run.json").write_text('{"teacher": "sd", "family": "sdxl"}')
    comfy = tmp_path / "ComfyUI" / "models" / "vae_approx"
    tinyae_cli(["export", "--student", str(tmp_path / "runs" / "sd" / "student"), "--to", "taesd",
                "--dtype", "fp16", "--out", str(comfy)])  # family from run.json
    assert sorted(p.name for p in comfy.iterdir()) == [
        "taesdxl_decoder.pth", "taesdxl_decoder.safetensors", "taesdxl_encoder.pth", "taesdxl_encoder.safetensors"]

    out = export_student(tmp_path / "runs" / "sd" / "student", to="diffusers", dtype="fp16")
    assert out == (tmp_path / "runs" / "sd" / "student-diffusers").resolve()
    assert (out / "diffusion_pytorch_model.fp16.safetensors").is_file()


def test_export_script_errors_are_one_line_and_exit_2(student, tmp_path, capsys):
    student.save_pretrained(tmp_path / "student")
    (tmp_path / "student-all").mkdir()
    with pytest.raises(SystemExit) as exit_info:  # what `tinyae export ...` does on a user error
        tinyae_cli(["export", "--student", str(tmp_path / "student"), "--family", "sd"])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: ") and stderr.strip().count("\n") == 0
    assert "student-all' already exists; pass --overwrite to replace" in stderr
    assert not any((tmp_path / "student-all").iterdir())


def test_qwen_image_has_no_taesd_pair_and_exports_a_pipeline_ready_diffusers_folder(tmp_path):
    student = tiny_student("qwen-image")
    with pytest.raises(ExportError, match="no TAESD pair that ComfyUI or Forge load"):
        export_taesd(student, tmp_path / "pair", "qwen-image")
    folder = export_all(student, tmp_path / "all", "qwen-image")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    # AutoencoderTiny holds this layout, but QwenImagePipeline needs latents_mean/std and one-frame videos from pipe.vae.
    assert config["_class_name"] == "TinyAutoencoder" and config["family"] == "qwen-image"
    assert_same_weights(load_student(folder), student)
    again = export_student(folder, to="diffusers", out=tmp_path / "again")  # the family travels with the folder
    assert json.loads((again / "config.json").read_text())["family"] == "qwen-image"


# ---------------------------------------------------------------- what clients see (issue: a newcomer's first hour)


def test_the_shipped_folder_of_several_pairs_exports_the_family_it_is_asked_for(tmp_path):
    """`tinyae export --student weights/taesd-upstream --family flux2`: that folder holds taef2 and taesana files."""
    out = tmp_path / "vae_approx"
    tinyae_cli(["export", "--student", str(ROOT / "weights" / "taesd-upstream"), "--family", "flux2", "--to", "taesd",
                "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == [
        "taef2_decoder.pth", "taef2_decoder.safetensors", "taef2_encoder.pth", "taef2_encoder.safetensors"]
    shipped = torch.load(ROOT / "weights" / "taesd-upstream" / "taef2_decoder.pth", weights_only=True)
    written = load_file(out / "taef2_decoder.safetensors")
    assert written.keys() == shipped.keys() and all(torch.equal(written[k], shipped[k].float()) for k in shipped)


def test_the_same_student_always_exports_the_same_bytes(student, tmp_path):
    """A .pth is a zip whose inner folder torch names after the file: written through a temporary name, that name
    (host, PID, random tag) used to end up inside, and each export had another checksum."""
    for name in ("first", "second"):
        export_all(student, tmp_path / name, "sd", dtype=torch.float16)
    files = sorted(p.name for p in (tmp_path / "first").iterdir())
    assert any(name.endswith(".pth") for name in files)
    for name in files:
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name


def test_autoencoder_tiny_refuses_a_tiny_autoencoder_folder_and_names_the_class_to_use(tmp_path):
    """AutoencoderTiny would load a FLUX.2 student's folder with a warning and decode without its pool branch."""
    student = tiny_student("flux2")
    export_diffusers(student, tmp_path / "flux2", family="flux2")
    with pytest.raises(ValueError, match="load this folder with tinyae.tinyautoencoder.from_pretrained"):
        AutoencoderTiny.from_pretrained(tmp_path / "flux2")
    model = TinyAutoencoder.from_pretrained(tmp_path / "flux2")
    assert model.config.act_fn == "relu"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in student.state_dict().items())
    assert_same_weights(load_student(tmp_path / "flux2"), student)

    config = json.loads((tmp_path / "flux2" / "config.json").read_text())  # as tinyae wrote it before the guard
    config["act_fn"] = config.pop("activation")
    (tmp_path / "flux2" / "config.json").write_text(json.dumps(config))
    assert TinyAutoencoder.from_pretrained(tmp_path / "flux2").config.act_fn == "relu"
    assert_same_weights(load_student(tmp_path / "flux2"), student)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_a_student_with_non_finite_weights_is_refused_and_not_blamed_on_fp16(student, tmp_path, capsys, dtype):
    with torch.no_grad():
        student.decoder.layers[-1].weight[0, 0, 0, 0] = float("nan")
    student.save_pretrained(tmp_path / "student")
    with pytest.raises(SystemExit) as exit_info:
        tinyae_cli(["export", "--student", str(tmp_path / "student"), "--to", "taesd", "--family", "sd",
                    "--dtype", dtype, "--out", str(tmp_path / "comfy")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert "not finite" in err and "decoder" in err and "overflow" not in err
    assert not (tmp_path / "comfy").exists()


def test_a_pair_renamed_for_another_family_is_refused_on_loading_not_after_training(tmp_path):
    flux2_style_pair(tmp_path)
    for role in ("encoder", "decoder"):
        (tmp_path / f"taef2_{role}.pth").rename(tmp_path / f"taesd_{role}.pth")
    with pytest.raises(ExportError, match=r"pair named taesd_\* has 32 latent channels but family 'sd' uses 4; .* \(flux2, sana\)"):
        load_student(tmp_path / "taesd_encoder.pth")
