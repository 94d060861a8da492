"""`export --to taehv`: taehv.py's and ComfyUI's file names and dtypes, exact reloads, refusals that lose nothing."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tiny_pipelines import tiny_student

from tinyae.cli import main as tinyae_cli
from tinyae.errors import ExportError
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
        export_taehv(taew2_1, tmp_path, "taehv", dtype="fp32")  # ComfyUI would take it for Wan 2.1's
    with pytest.raises(ExportError, match="taehv.py builds 'taew2_2' with 48"):
        export_taehv(taew2_1, tmp_path, "taew2_2")
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
    assert "image student of the qwen-image family" in err and "cannot be written as a taew2_1 file" in err
    assert "distill a video student against wan2.1" in err and not (tmp_path / "out").exists()


def test_a_video_student_of_another_latent_space_is_not_exported_for_qwen_image(tmp_path):
    hunyuan = VideoStudent.published("taehv")
    hunyuan.save_pretrained(tmp_path / "student")
    with pytest.raises(ExportError, match="stands for 'taehv' .* previewed with 'taew2_1'"):
        export_student(tmp_path / "student", to="taehv", family="qwen-image", out=tmp_path / "out")
    with pytest.raises(ExportError, match="Family 'sd' has no TAEHV file"):
        export_student(tmp_path / "student", to="taehv", family="sd", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


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
