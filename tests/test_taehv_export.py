"""`export --to taehv`: taehv.py's and ComfyUI's file names and dtypes, exact reloads, refusals that lose nothing."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tiny_pipelines import tiny_student

from tinyae.cli import main as tinyae_cli
from tinyae.config import StudentConfig
from tinyae.errors import ExportError
from tinyae.models.student import Student
from tinyae.models.variants import resolve_arch
from tinyae.models.video_student import VideoStudent, arch_from_state, load_video_student, run_parallel
from tinyae.shipping.export import export_all, export_student
from tinyae.shipping.taehv import export_taehv, taehv_files
from tinyae.shipping.taehv_check import seeded_student


@pytest.fixture(scope="module")
def taew2_1() -> VideoStudent:
    return seeded_student("taew2_1")


@pytest.fixture(scope="module")
def exported(taew2_1, tmp_path_factory) -> tuple[Path, list[Path]]:
    folder = tmp_path_factory.mktemp("taehv")
    return folder, export_taehv(taew2_1, folder, dtype="fp16")


def test_a_wan_2_1_student_is_written_under_taehv_py_and_comfyui_names(exported):
    tmp_path, paths = exported
    assert sorted(str(p.relative_to(tmp_path)) for p in paths) == [
        "comfyui/lighttaew2_1.pth", "comfyui/lighttaew2_1.safetensors", "taew2_1.pth", "taew2_1.safetensors"]
    assert load_file(tmp_path / "taew2_1.safetensors")["decoder.22.bias"].dtype == torch.float16
    # ComfyUI reads a 16-channel fp16 file as HunyuanVideo's, so its Wan 2.1 file stays fp32
    comfy = torch.load(tmp_path / "comfyui" / "lighttaew2_1.pth", weights_only=True)
    assert comfy["decoder.1.weight"].dtype == torch.float32 and comfy["decoder.1.weight"].shape[1] == 16


def test_the_exported_files_load_back_exactly_and_their_layout_is_read_off_the_shapes(taew2_1, exported):
    tmp_path, _ = exported
    for path, dtype in ((tmp_path / "taew2_1.safetensors", torch.float16),
                        (tmp_path / "comfyui" / "lighttaew2_1.pth", torch.float32)):
        again = load_video_student(path)
        assert again.arch == taew2_1.arch
        assert all(torch.equal(a, b.to(dtype).float())
                   for a, b in zip(again.state_dict().values(), taew2_1.state_dict().values()))


def test_exports_are_byte_identical(taew2_1, exported, tmp_path):
    export_taehv(taew2_1, tmp_path, dtype="fp16")
    for name in taehv_files("taew2_1", "fp16"):
        assert (tmp_path / name).read_bytes() == (exported[0] / name).read_bytes(), name


def test_wan_2_2_and_ltx_layouts_are_recognised_from_their_weights():
    for name in ("taew2_2", "taeltx_2", "taehv1_5"):
        state = VideoStudent.published(name).state_dict()
        assert arch_from_state(state, name) == VideoStudent.published(name).arch, name


def test_an_existing_file_is_kept_unless_overwrite(taew2_1, tmp_path):
    (tmp_path / "comfyui").mkdir()
    (tmp_path / "comfyui" / "lighttaew2_1.pth").write_bytes(b"keep me")
    with pytest.raises(ExportError, match="already exists"):
        export_taehv(taew2_1, tmp_path)
    assert (tmp_path / "comfyui" / "lighttaew2_1.pth").read_bytes() == b"keep me"
    assert not (tmp_path / "taew2_1.pth").exists()
    export_taehv(taew2_1, tmp_path, overwrite=True)
    assert load_video_student(tmp_path / "comfyui" / "lighttaew2_1.pth").arch == taew2_1.arch


def test_refusals_are_one_sentence_and_write_nothing(taew2_1, tmp_path):
    with pytest.raises(ExportError, match="export 'taehv' with --dtype fp16"):
        export_taehv(VideoStudent.published("taehv"), tmp_path, dtype="fp32")  # ComfyUI would take it for Wan 2.1's
    with pytest.raises(ExportError, match="'taew2_2' stands for Wan 2.2 TI2V-5B's latent space"):
        export_taehv(taew2_1, tmp_path, "taew2_2")
    with pytest.raises(ExportError, match="taehv.py builds 'taew2_2' with 48"):
        export_taehv(VideoStudent(), tmp_path, "taew2_2")  # no recorded space: its shape is refused
    narrow = VideoStudent(encoder_width=8, decoder_widths=(16, 8, 8, 8), taehv_name="taew2_1")
    with pytest.raises(ExportError, match="widths"):
        export_taehv(narrow, tmp_path)
    with pytest.raises(ExportError, match="pass --model"):
        export_taehv(VideoStudent(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_cli_exports_a_video_student_folder_and_refuses_a_wrong_model_with_exit_2(taew2_1, tmp_path, capsys):
    taew2_1.save_pretrained(tmp_path / "student")
    tinyae_cli(["export", "--student", str(tmp_path / "student"), "--to", "taehv", "--dtype", "fp16"])
    assert (tmp_path / "student-taehv" / "comfyui" / "lighttaew2_1.safetensors").is_file()
    with pytest.raises(SystemExit) as exit_info:
        tinyae_cli(["export", "--student", str(tmp_path / "student"), "--to", "taehv", "--model", "taeltx_2",
                    "--out", str(tmp_path / "ltx")])
    assert exit_info.value.code == 2 and "taeltx_2" in capsys.readouterr().err
    assert not Path(tmp_path / "ltx").exists()


# ---------------------------------------------------------------- qwen-image: ComfyUI previews it with lighttaew2_1


def test_the_qwen_image_family_exports_a_wan_2_1_video_student_as_the_taew2_1_file_comfyui_previews_it_with(
        taew2_1, tmp_path):
    taew2_1.save_pretrained(tmp_path / "student")
    out = export_student(tmp_path / "student", to="taehv", family="qwen-image", dtype="fp16")
    comfy = load_file(out / "comfyui" / "lighttaew2_1.safetensors")  # the name latent_formats.Wan21 asks for
    assert comfy["decoder.22.bias"].dtype == torch.float32 and comfy["decoder.1.weight"].shape[1] == 16
    # ComfyUI's previewer decodes one latent frame of a Qwen-Image latent: one image, the first frame of any video
    student = load_video_student(out / "comfyui" / "lighttaew2_1.safetensors")
    z = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        image, video = student.decode(z[:, :, :1]).sample, student.decode(z).sample
    assert image.shape == (1, 3, 1, 32, 32) and (image[:, :, 0] - video[:, :, 0]).abs().max() < 1e-5


def test_an_image_student_of_qwen_image_is_refused_with_why_and_the_video_path(tmp_path, capsys):
    export_all(tiny_student("qwen-image"), tmp_path / "image", "qwen-image")
    with pytest.raises(SystemExit) as exit_info:
        tinyae_cli(["export", "--student", str(tmp_path / "image"), "--to", "taehv", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert "is an image student (TAESD layout)" in err
    assert "cannot be written as the taew2_1 file the qwen-image family is previewed with" in err
    assert "distill a video student against wan2.1" in err and not (tmp_path / "out").exists()


def test_a_video_student_of_another_latent_space_is_not_exported_for_qwen_image(tmp_path):
    hunyuan = VideoStudent.published("taehv")
    hunyuan.save_pretrained(tmp_path / "student")
    with pytest.raises(ExportError, match="stands for 'taehv' .* previewed with 'taew2_1'"):
        export_student(tmp_path / "student", to="taehv", family="qwen-image", out=tmp_path / "out")
    with pytest.raises(ExportError, match="Family 'sd' has no TAEHV file"):
        export_student(tmp_path / "student", to="taehv", family="sd", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def sd_student() -> Student:
    return Student(resolve_arch(StudentConfig(encoder_widths=[8], decoder_widths=[8], encoder_blocks=[1],
                                              decoder_blocks=[1]), 4, 8, "sd"))


def test_an_sd_image_student_exported_for_qwen_image_is_not_called_a_qwen_image_student(tmp_path):
    export_all(sd_student(), tmp_path / "sd", "sd")  # issue 26, case 16
    with pytest.raises(ExportError) as error:
        export_student(tmp_path / "sd", to="taehv", family="qwen-image", out=tmp_path / "out")
    assert "of the qwen-image family" not in str(error.value) and "is an image student (TAESD layout)" in str(
        error.value)


# ---------------------------------------------------------------- issue 26: latent space, NaN, damaged files


def wan_student(folder: Path) -> Path:
    """A Wan 2.1 video student as distill saves it: its teacher and that teacher's VAE class recorded."""
    seeded_student("taew2_1").save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    recorded = {"teacher": "tiny-wan", "teacher_class": "AutoencoderKLWan"}
    (folder / "config.json").write_text(json.dumps(config | recorded))
    return folder


@pytest.mark.parametrize("model", ["taehv", "taecvx"])
def test_a_wan_student_is_not_exported_under_another_latent_spaces_name(tmp_path, capsys, model):
    source = wan_student(tmp_path / "wan")
    with pytest.raises(SystemExit) as exit_info:
        tinyae_cli(["export", "--student", str(source), "--to", "taehv", "--model", model, "--dtype", "fp16",
                    "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.strip().count("\n") == 0, err
    assert f"--model '{model}' stands for" in err and "distilled for 'taew2_1'" in err
    assert not (tmp_path / "out").exists()


def test_the_recorded_teacher_class_refuses_another_space_where_the_model_name_is_unknown(tmp_path):
    unnamed = seeded_student("taew2_1")
    unnamed.taehv_name = None  # as read from a file of an unpublished name
    unnamed.record_teacher("my-wan", "AutoencoderKLWan")
    with pytest.raises(ExportError, match="'taehv' stands for HunyuanVideo \\(AutoencoderKLHunyuanVideo\\), but the "
                                          "student was distilled from 'my-wan', an AutoencoderKLWan"):
        export_taehv(unnamed, tmp_path, "taehv", dtype="fp16")
    assert export_taehv(unnamed, tmp_path / "ok", "taew2_1")


def test_a_folder_saved_before_teachers_were_recorded_still_loads_and_exports(tmp_path):
    source = wan_student(tmp_path / "wan")
    config = json.loads((source / "config.json").read_text())
    del config["teacher"], config["teacher_class"]
    (source / "config.json").write_text(json.dumps(config))
    student = load_video_student(source)
    assert (student.teacher, student.teacher_class, student.taehv_name) == (None, None, "taew2_1")
    assert export_student(source, to="taehv", dtype="fp16", out=tmp_path / "out").is_dir()


def nan_student(folder: Path) -> Path:
    source = wan_student(folder)
    student = load_video_student(source)
    with torch.no_grad():
        student.decoder[1].weight[0, 0, 0, 0] = float("nan")
    student.save_pretrained(source)
    return source


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_a_nan_video_student_is_refused_by_export_as_not_finite_and_nothing_is_written(tmp_path, capsys, dtype):
    source = nan_student(tmp_path / "nan")
    with pytest.raises(SystemExit) as exit_info:
        tinyae_cli(["export", "--student", str(source), "--to", "taehv", "--dtype", dtype, "--out",
                    str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "not finite numbers (NaN or inf in decoder.1.weight)" in err, err
    assert "export in fp32" not in err and not (tmp_path / "out").exists()


def test_a_nan_image_student_cast_to_fp16_is_called_not_finite_not_an_overflow():
    from tinyae.utils.weights import cast_state

    with pytest.raises(ExportError, match="not finite numbers") as error:
        cast_state({"w": torch.tensor([1.0, float("nan")])}, torch.float16)
    assert "fp32" not in str(error.value)
    with pytest.raises(ExportError, match="overflows torch.float16; export in fp32"):
        cast_state({"w": torch.tensor([1.0, 1e6])}, torch.float16)


def truncated_student(folder: Path) -> Path:
    source = wan_student(folder)
    weights = source / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return source


def test_a_truncated_video_student_is_named_as_corrupt_by_export_evaluate_and_the_checker(tmp_path, capsys, photos):
    source = truncated_student(tmp_path / "cut")
    commands = [["export", "--student", str(source), "--to", "taehv", "--out", str(tmp_path / "out")],
                ["evaluate", "--student", str(source), "--teacher", "tiny-wan", "--data", str(photos), "--out",
                 str(tmp_path / "eval")],
                ["check-comfyui-taehv", "--taehv", str(tmp_path), "--student", str(source)]]
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            tinyae_cli(command)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.strip().count("\n") == 0, (command, err)
        assert "diffusion_pytorch_model.safetensors' is corrupt or truncated" in err, (command, err)
    assert not (tmp_path / "out").exists() and not (tmp_path / "eval").exists()


def test_a_damaged_taehv_file_is_corrupt_to_evaluate_not_an_unknown_teacher(tmp_path, capsys, photos):
    export_taehv(seeded_student("taew2_1"), tmp_path / "files", dtype="fp16")
    for path in (tmp_path / "files" / "taew2_1.pth", tmp_path / "files" / "taew2_1.safetensors"):
        path.write_bytes(path.read_bytes()[:3000])
        with pytest.raises(SystemExit) as exit_info:
            tinyae_cli(["evaluate", "--student", str(path), "--teacher", "tiny-wan", "--data", str(photos),
                        "--out", str(tmp_path / "eval")])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and f"'{path}' is corrupt or truncated" in err, err
        assert "Unknown teacher" not in err


def test_random_bytes_are_a_corrupt_file_and_a_code_pickle_is_still_called_one(tmp_path):
    from tinyae.utils.weights import read_weights

    (tmp_path / "noise.pth").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ExportError, match="is corrupt or truncated") as error:
        read_weights(tmp_path / "noise.pth")
    assert "pickle" not in str(error.value)
    torch.save({"w": torch.zeros(1), "run": Path("anything")}, tmp_path / "payload.pth")  # a global: not tensors
    with pytest.raises(ExportError, match="is a pickle that needs more than tensors"):
        read_weights(tmp_path / "payload.pth")


def test_an_image_student_against_a_video_teacher_is_told_so(tmp_path, capsys, photos):
    export_all(sd_student(), tmp_path / "sd", "sd")
    with pytest.raises(SystemExit):
        tinyae_cli(["evaluate", "--student", str(tmp_path / "sd"), "--teacher", "tiny-wan", "--data", str(photos),
                    "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert "'tiny-wan' is a video teacher but" in err and "image student" in err and "Unknown teacher" not in err


@pytest.mark.parametrize("to", ["taesd", "diffusers", "onnx", "all"])
def test_a_video_student_given_for_an_image_export_points_to_taehv(tmp_path, capsys, to):
    source = wan_student(tmp_path / "wan")
    with pytest.raises(SystemExit):
        tinyae_cli(["export", "--student", str(source), "--to", to, "--family", "sd", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert "video student" in err and "--to taehv" in err and "full VAE" not in err, err


# ---------------------------------------------------------------- check-comfyui-taehv fails on a difference


FAKE_TAEHV = """
import torch
from tinyae.models.video_student import load_video_student

OFFSET = {offset}


class TAEHV(torch.nn.Module):
    def __init__(self, path, **switches):
        super().__init__()
        self.student = load_video_student(path).for_previews(**switches)

    def encode_video(self, x, parallel=True, show_progress_bar=False):
        return self.student.encode_frames01(x) + OFFSET

    def decode_video(self, z, parallel=True, show_progress_bar=False):
        return self.student.decode_frames01(z, parallel=parallel).clamp(0, 1) + OFFSET
"""


def fake_taehv(folder: Path, offset: float) -> Path:
    """A stand-in for a madebyollin/taehv checkout whose taehv.py differs from tinyae's by `offset`."""
    folder.mkdir()
    (folder / "taehv.py").write_text(FAKE_TAEHV.format(offset=offset))
    return folder


def test_the_checker_exits_non_zero_on_a_difference_over_its_tolerance(tmp_path, capsys):
    same, off = fake_taehv(tmp_path / "same", 0.0), fake_taehv(tmp_path / "off", 1e-3)
    tinyae_cli(["check-comfyui-taehv", "--taehv", str(same), "--model", "taew2_1"])
    assert "OK: every difference is within the tolerance" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        tinyae_cli(["check-comfyui-taehv", "--taehv", str(off), "--model", "taew2_1"])
    assert exit_info.value.code == 1 and "decode_max_abs_diff" in capsys.readouterr().err
    tinyae_cli(["check-comfyui-taehv", "--taehv", str(off), "--model", "taew2_1", "--tolerance", "1e-2"])


def test_the_checker_refuses_a_nan_student_and_fails_on_a_nan_difference(tmp_path, capsys):
    from tinyae.shipping.taehv_check import failures

    with pytest.raises(SystemExit) as exit_info:
        tinyae_cli(["check-comfyui-taehv", "--taehv", str(fake_taehv(tmp_path / "same", 0.0)), "--student",
                    str(nan_student(tmp_path / "nan"))])
    assert exit_info.value.code == 2 and "not finite numbers" in capsys.readouterr().err
    rows = {"taehv.py": [{"file": "taew2_1.pth", "dtype": "torch.float32", "decode_max_abs_diff": float("nan")}]}
    assert failures(rows) == ["taehv.py taew2_1.pth decode_max_abs_diff=nan (tolerance 0.0001)"]
    rows["taehv.py"][0] |= {"dtype": "torch.float16", "decode_max_abs_diff": 5e-3}
    assert failures(rows) == []


# ------------------------------------------------------------ layouts published since: names, dtypes, ComfyUI copies

EXPECTED_FILES = {  # model: its ComfyUI copy (models/vae_approx name), or None where ComfyUI has no path
    "taeh3": "taeh3", "taeltx_2": "taeltx_2", "taeltx2_3": "taeltx_2", "lighttaehy1_5": "lighttaehy1_5",
    "taew2_2_super": None, "taehv1_5_super": None, "taeltx2_3_wide": None, "taeos1_3": None, "taecvx": None}


@pytest.mark.parametrize("name", list(EXPECTED_FILES))
def test_each_layout_is_written_under_taehv_py_names_and_the_name_comfyui_loads_it_by(name):
    comfy = EXPECTED_FILES[name]
    expected = {f"{name}.safetensors": "fp16", f"{name}.pth": "fp16"}
    if comfy is not None:
        expected |= {f"comfyui/{comfy}.safetensors": "fp16", f"comfyui/{comfy}.pth": "fp16"}
    assert taehv_files(name, "fp16") == expected


@pytest.mark.parametrize("name", ["taeh3", "taew2_2_super", "taeltx2_3", "lighttaehy1_5"])
def test_a_newer_layout_exports_in_the_asked_dtype_and_loads_back_as_the_same_layout(name, tmp_path):
    student = VideoStudent.published(name)
    paths = export_taehv(student, tmp_path, dtype="fp16")
    for path in paths:
        state = load_file(path) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
        assert state["decoder.22.bias"].dtype == torch.float16 and state.keys() == student.state_dict().keys()
        assert load_video_student(path).arch == student.arch, path


@pytest.mark.parametrize("name", ["taeh3", "taew2_2_super", "taehv1_5_super", "taeltx2_3", "taeltx2_3_wide",
                                  "lighttaehy1_5"])
def test_newer_layouts_are_recognised_from_their_weights(name):
    state = VideoStudent.published(name).state_dict()
    assert arch_from_state(state, name) == VideoStudent.published(name).arch


def test_a_relu_taehv1_5_export_warns_that_comfyui_reads_it_as_lighttaehy1_5(tmp_path):
    with pytest.warns(UserWarning, match="ComfyUI builds any 32-channel file like 'taehv1_5' as 'lighttaehy1_5'"):
        paths = export_taehv(VideoStudent.published("taehv1_5"), tmp_path)
    assert sorted(p.name for p in paths) == ["taehv1_5.pth", "taehv1_5.safetensors"]  # no ComfyUI copy


def test_a_student_of_another_decoder_or_activation_is_refused_for_a_layout_it_does_not_compute(tmp_path):
    with pytest.raises(ExportError, match="super decoder"):
        export_taehv(VideoStudent.published("taew2_2_super"), tmp_path, "taew2_2")
    with pytest.raises(ExportError, match="act_fn relu"):
        export_taehv(VideoStudent.published("taehv1_5"), tmp_path, "lighttaehy1_5")
    assert list(tmp_path.iterdir()) == []


@torch.no_grad()
def test_lighttaehy1_5_writes_frames_in_minus_1_to_1_as_comfyui_maps_them():
    student = VideoStudent.published("lighttaehy1_5").eval()
    z = torch.randn(1, 2, 32, 2, 2, generator=torch.Generator().manual_seed(0))
    raw = F.pixel_shuffle(run_parallel(student.decoder, z)[:, 3:], 2)
    assert (student.decode_frames01(z) - (raw + 1) / 2).abs().max() < 1e-6
