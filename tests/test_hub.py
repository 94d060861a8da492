"""Publishing: the exact folder a push would upload, its model card, and clear failures that keep it."""

import json
import warnings
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from diffusers import AutoencoderTiny
from huggingface_hub import ModelCard
from tiny_pipelines import tiny_student

from tinyae.cli import main as tinyae_cli
from tinyae.config import StudentConfig
from tinyae.data.images import center_crop, load_rgb, to_pil
from tinyae.errors import ExportError
from tinyae.models.formats import load_student
from tinyae.models.student import Student
from tinyae.shipping.hub import build_upload_folder, push_to_hub

ROOT = Path(__file__).resolve().parent.parent
METRICS = {"steps": 200, "heldout_images": 2, "psnr": 24.125, "ssim": 0.7125, "ms_ssim": None, "lpips": 0.1875}


@pytest.fixture
def run_dir(tmp_path, photos):
    """What scripts/distill.py leaves behind: student/, metrics.json, samples/, run.json."""
    out = tmp_path / "runs" / "sd"
    torch.manual_seed(0)
    student = Student(StudentConfig(latent_channels=4))  # the published layout: its pair is for ComfyUI too
    student.save_pretrained(out / "student")
    (out / "metrics.json").write_text(json.dumps(METRICS))
    (out / "run.json").write_text(json.dumps({
        "teacher": "sd", "teacher_repo": "stabilityai/sd-vae-ft-mse", "family": "sd", "steps": 200,
        "recipe": {"name": "smoke", "train": {"steps": 200}}}))
    (out / "samples").mkdir()
    for step, name in ((100, "astronaut"), (200, "coffee")):
        to_pil(center_crop(load_rgb(photos / f"{name}.png"), 64)).save(out / "samples" / f"step-{step:07d}.png")
    return out


def test_dry_run_writes_and_lists_the_exact_upload_folder(run_dir, capsys):
    folder = push_to_hub(run_dir, "someone/tinyae-sd", dry_run=True)

    assert folder == run_dir.parent / "sd-hub"
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["README.md", "config.json", "diffusion_pytorch_model.fp16.safetensors",
                     "diffusion_pytorch_model.safetensors", "metrics.json", "run.json", "samples.png",
                     "taesd_decoder.pth", "taesd_decoder.safetensors", "taesd_encoder.pth", "taesd_encoder.safetensors"]
    printed = capsys.readouterr().out
    assert "Would upload" in printed and "https://huggingface.co/someone/tinyae-sd" in printed
    assert all(name in printed for name in files)
    # The newest sample grid is the one shown; every weight file loads and holds the trained student.
    assert (folder / "samples.png").read_bytes() == (run_dir / "samples" / "step-0000200.png").read_bytes()
    student = Student.from_pretrained(run_dir / "student")
    assert torch.equal(AutoencoderTiny.from_pretrained(folder).state_dict()["decoder.layers.0.weight"],
                       student.state_dict()["decoder.layers.0.weight"])
    from_pair = load_student(folder / "taesd_decoder.pth")
    assert {v.dtype for v in torch.load(folder / "taesd_decoder.pth", weights_only=True).values()} == {torch.float16}
    for key, value in student.state_dict().items():
        assert torch.equal(from_pair.state_dict()[key], value.half().float()), key


def test_model_card_fields_metrics_and_usage(run_dir):
    folder = build_upload_folder(run_dir, run_dir.parent / "upload", repo_id="someone/tinyae-sd")
    card = ModelCard.load(folder / "README.md")

    assert card.data.library_name == "diffusers"
    assert card.data.base_model == "stabilityai/sd-vae-ft-mse"
    assert {"tinyae", "taesd", "stable-diffusion"} <= set(card.data.tags)
    assert "| psnr | 24.12 |" in card.text and "| lpips | 0.1875 |" in card.text and "| ms_ssim | n/a |" in card.text
    assert "![samples](samples.png)" in card.text
    assert 'AutoencoderTiny.from_pretrained("someone/tinyae-sd", torch_dtype=torch.float16)' in card.text
    assert "StableDiffusionPipeline" in card.text
    assert ("hf download someone/tinyae-sd taesd_encoder.safetensors taesd_decoder.safetensors "
            "--local-dir ComfyUI/models/vae_approx") in card.text
    assert "Trained for 200 steps with the `smoke` recipe" in card.text


def test_a_bare_student_folder_needs_only_a_family(tmp_path):
    torch.manual_seed(0)
    Student(StudentConfig(latent_channels=4)).save_pretrained(tmp_path / "student")
    with pytest.raises(ExportError, match="pass --family"):
        build_upload_folder(tmp_path / "student", tmp_path / "upload")
    folder = build_upload_folder(tmp_path / "student", tmp_path / "upload", "someone/tiny-xl", family="sdxl")
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model is None and "stable-diffusion-xl" in card.data.tags
    assert "## Held-out metrics" not in card.text and "StableDiffusionXLPipeline" in card.text
    assert (folder / "taesdxl_decoder.safetensors").is_file() and not (folder / "samples.png").exists()
    with pytest.raises(ExportError, match="already exists"):
        build_upload_folder(tmp_path / "student", tmp_path / "upload", family="sdxl")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_no_token_is_a_clear_error_and_the_folder_stays(run_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    before = snapshot(run_dir)
    with pytest.raises(ExportError, match="No Hugging Face token: log in with `hf auth login`.*ready at .*sd-hub"):
        push_to_hub(run_dir, "someone/tinyae-sd")
    assert (run_dir.parent / "sd-hub" / "README.md").is_file() and snapshot(run_dir) == before


def test_offline_is_a_clear_error_and_the_folder_stays(run_dir, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ExportError, match="Nothing was uploaded to someone/tinyae-sd because HF_HUB_OFFLINE is set"):
        push_to_hub(run_dir, "someone/tinyae-sd", token="hf_not_a_real_token")
    assert (run_dir.parent / "sd-hub" / "taesd_decoder.safetensors").is_file()


def test_unreachable_hub_is_a_clear_error(run_dir, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(ExportError, match=r"Could not upload to someone/tinyae-sd \(.*\); the upload folder is ready"):
        push_to_hub(run_dir, "someone/tinyae-sd", token="hf_not_a_real_token")
    assert (run_dir.parent / "sd-hub" / "config.json").is_file()


def test_bad_repo_ids_are_refused_before_any_work(run_dir):
    for repo_id in ("tinyae-sd", "some one/x"):
        with pytest.raises(ExportError, match="USER/NAME"):
            push_to_hub(run_dir, repo_id, dry_run=True)
    assert not (run_dir.parent / "sd-hub").exists()


def test_push_script_dry_run(run_dir, capsys):
    """README "Publish to the Hub": tinyae push --student runs/sd --repo-id you/tinyae-sd --dry-run"""
    tinyae_cli(["push", "--student", str(run_dir), "--repo-id", "you/tinyae-sd", "--dry-run"])
    assert "Would upload" in capsys.readouterr().out
    assert ModelCard.load(run_dir.parent / "sd-hub" / "README.md").data.base_model == "stabilityai/sd-vae-ft-mse"


@pytest.mark.parametrize("family, teacher_repo, base_model, pipeline_class", [
    ("flux2", "black-forest-labs/FLUX.2-klein-4B", "black-forest-labs/FLUX.2-klein-4B", "Flux2KleinPipeline"),
    ("flux2", str(Path("/weights/taesd-upstream/taef2")), "black-forest-labs/FLUX.2-klein-4B", "Flux2KleinPipeline"),
    ("sana", "mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers", "mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers",
     "SanaPipeline"),
    ("qwen-image", "Qwen/Qwen-Image", "Qwen/Qwen-Image", "QwenImagePipeline"),
])
def test_cards_of_the_new_families_name_their_base_model_class_and_files(family, teacher_repo, base_model,
                                                                         pipeline_class, tmp_path):
    out = tmp_path / "run"
    tiny_student(family).save_pretrained(out / "student", family=family)
    (out / "run.json").write_text(json.dumps({"teacher": family, "teacher_repo": teacher_repo, "family": family,
                                              "base_model": "black-forest-labs/FLUX.2-klein-4B"
                                              if family == "flux2" else None}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the slim test student is not ComfyUI's layout
        folder = build_upload_folder(out, tmp_path / "upload", repo_id="someone/tiny")
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == base_model and family in card.data.tags
    assert "from tinyae import TinyAutoencoder" in card.text and pipeline_class in card.text
    assert 'TinyAutoencoder.from_pretrained("someone/tiny", torch_dtype=torch.bfloat16)' in card.text
    prefix = {"flux2": "taef2-custom", "sana": "taesana-custom", "qwen-image": None}[family]  # slim test students
    if prefix:
        assert (folder / f"{prefix}_decoder.safetensors").is_file() and f"{prefix}_decoder" in card.text
        assert "named for no client to pick up" in card.text and "ComfyUI/models/vae_approx" not in card.text
    else:  # no TAESD pair exists for Qwen-Image (ComfyUI previews it with a video model): diffusers files only
        assert not list(folder.glob("*_decoder.*")) and "ComfyUI" not in card.text


def test_a_second_push_keeps_an_edited_model_card_and_extra_files_and_renews_an_unedited_card(run_dir, caplog):
    folder = push_to_hub(run_dir, "someone/tinyae-sd", dry_run=True)
    (folder / "notes.md").write_text("my notes")
    (run_dir / "metrics.json").write_text(json.dumps({**METRICS, "psnr": 31.5}))
    push_to_hub(run_dir, "someone/tinyae-sd", dry_run=True)
    assert (folder / "notes.md").read_text() == "my notes"
    assert "31.5" in (folder / "README.md").read_text()  # unedited: written again from the new metrics

    edited = (folder / "README.md").read_text().replace("## Use it", "My own words.\n\n## Use it", 1)
    (folder / "README.md").write_text(edited)
    push_to_hub(run_dir, "someone/tinyae-sd", dry_run=True)
    assert (folder / "README.md").read_text() == edited
    assert any("Kept the edited model card" in m for m in caplog.messages)
