"""`export --to taehv`: taehv.py's and ComfyUI's file names and dtypes, exact reloads, refusals that lose nothing."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tinyae.cli import main as tinyae_cli
from tinyae.errors import ExportError
from tinyae.models.video_student import VideoStudent, arch_from_state, load_video_student
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
