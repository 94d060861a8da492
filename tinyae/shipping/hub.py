"""Publish a student on the Hugging Face Hub, with a model card people can copy from.

The upload folder is built locally first, in full: AutoencoderTiny files (+ fp16 variant),
the TAESD pair in fp16 for ComfyUI / Forge, a model card, and the run's metrics and sample
grid when the training run left them. A dry run stops there, so what would be uploaded can
be read file by file; a failed upload (no token, offline, no access) leaves it in place to
retry or to upload by hand with `hf upload`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData

from tinyae.errors import ExportError
from tinyae.models.formats import FAMILIES, check_family, family_info, load_student, pair_prefix
from tinyae.shipping.export import export_all, run_info
from tinyae.utils.hub_access import looks_like_repo_id

# Per family: the pipeline its users run, a repo of it and its usual dtype (for the card's snippet), and a Hub tag.
PIPELINES = {
    "sd": ("StableDiffusionPipeline", "stable-diffusion-v1-5/stable-diffusion-v1-5", "float16", "stable-diffusion"),
    "sdxl": ("StableDiffusionXLPipeline", "stabilityai/stable-diffusion-xl-base-1.0", "float16", "stable-diffusion-xl"),
    "sd3": ("StableDiffusion3Pipeline", "stabilityai/stable-diffusion-3-medium-diffusers", "float16", "sd3"),
    "flux": ("FluxPipeline", "black-forest-labs/FLUX.1-schnell", "bfloat16", "flux"),
    "flux2": ("Flux2KleinPipeline", "black-forest-labs/FLUX.2-klein-4B", "bfloat16", "flux2"),
    "sana": ("SanaPipeline", "Efficient-Large-Model/Sana_1600M_1024px_diffusers", "bfloat16", "sana"),
    "qwen-image": ("QwenImagePipeline", "Qwen/Qwen-Image", "bfloat16", "qwen-image"),
}
SAMPLE_NAME = "samples.png"
CARD_SEAL = re.compile(r"\n<!-- tinyae card ([0-9a-f]{64}) -->\n$")  # the hash of the card as tinyae wrote it

logger = logging.getLogger(__name__)


def sealed(card: str) -> str:
    """The card with a hidden line holding its hash, so the next build can tell whether someone edited it."""
    return f"{card}\n<!-- tinyae card {hashlib.sha256(card.encode()).hexdigest()} -->\n"


def edited_card(path: Path) -> bool:
    """True for a README.md that is not exactly as tinyae wrote it (edited, or written by someone else)."""
    if not path.is_file():
        return False
    text = path.read_text(encoding="utf-8", errors="replace")
    seal = CARD_SEAL.search(text)
    return seal is None or hashlib.sha256(text[:seal.start()].encode()).hexdigest() != seal[1]


def locate_run(source: str | Path) -> tuple[Path, Path]:
    """(student folder, run folder) for a training output folder or a bare AutoencoderTiny folder."""
    source = Path(source)
    if (source / "student" / "config.json").is_file():
        return source / "student", source
    if (source / "config.json").is_file():
        return source, source.parent if (source.parent / "run.json").is_file() else source
    raise ExportError(f"'{source}' is neither a training output folder (with student/) nor an AutoencoderTiny "
                      "folder (with config.json).")


def default_upload_folder(source: str | Path) -> Path:
    source = Path(source).resolve()
    return source.with_name(f"{source.name}-hub")


def build_upload_folder(source: str | Path, folder: str | Path, repo_id: str = "USER/NAME",
                        family: str | None = None, overwrite: bool = False) -> Path:
    """Write everything an upload of `source` would contain into `folder` (atomically)."""
    student_dir, run_dir = locate_run(source)
    run = run_info(student_dir)
    student = load_student(student_dir)
    family = family or run.get("family") or student.family
    if family is None:
        raise ExportError(f"No run.json near '{source}' says which family the student belongs to; pass --family "
                          f"({', '.join(FAMILIES)}).")
    check_family(student, family, f"'{student_dir}'")
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    samples = sorted((run_dir / "samples").glob("*.png"))

    def add_card_and_extras(tmp: Path) -> None:
        if samples:
            shutil.copyfile(samples[-1], tmp / SAMPLE_NAME)
        for name in ("metrics.json", "run.json"):
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, tmp / name)
        if edited_card(Path(folder) / "README.md"):  # the user's words win over a regenerated card
            logger.warning("Kept the edited model card %s; delete it to have tinyae write a new one.",
                           Path(folder) / "README.md")
            return
        card = model_card(student, repo_id, family, run, metrics, sample=SAMPLE_NAME if samples else None)
        (tmp / "README.md").write_text(sealed(str(card)), encoding="utf-8")

    return export_all(student, folder, family, torch.float16, overwrite=overwrite, extra=add_card_and_extras)


def model_card(student, repo_id: str, family: str, run: dict | None = None, metrics: dict | None = None,
               sample: str | None = None) -> ModelCard:
    run = run or {}
    teacher_repo = run.get("teacher_repo")
    teacher_repo = teacher_repo if teacher_repo and looks_like_repo_id(teacher_repo) else None
    pipeline_class, pipeline_repo, dtype, family_tag = PIPELINES[family]
    info = family_info(family)
    family_name, prefix = info.name, info.prefix and pair_prefix(student, family)
    model_class = student.diffusers_class_name(family)
    data = ModelCardData(
        library_name="diffusers",
        tags=["tinyae", "taesd", "autoencoder", "vae", "distillation", family_tag],
        base_model=teacher_repo or run.get("base_model"),  # the teacher VAE's repo, or the model it stands for
    )
    n_enc = sum(p.numel() for p in student.encoder.parameters())
    n_dec = sum(p.numel() for p in student.decoder.parameters())
    teacher = f"[`{teacher_repo}`](https://huggingface.co/{teacher_repo})" if teacher_repo else "its teacher VAE"
    lines = [
        f"# {repo_id.split('/')[-1]}",
        "",
        f"A tiny autoencoder (TAESD-style, {n_enc / 1e6:.2f}M encoder + {n_dec / 1e6:.2f}M decoder parameters) "
        f"distilled with tinyae from {teacher}. It reads and writes the "
        f"{student.latent_channels}-channel latents {family_name} models see (scaling_factor 1.0), "
        "so it drops in as `pipe.vae` for fast decoding, live previews or cheap encoding.",
        "",
    ]
    if metrics:
        lines += ["## Held-out metrics", "", "From the training run's `metrics.json`:", "", metrics_table(metrics), ""]
    if sample:
        lines += [f"![samples]({sample})", ""]
    if run.get("recipe"):
        steps = run.get("steps", run["recipe"].get("train", {}).get("steps"))
        lines += [f"Trained for {steps} steps with the `{run['recipe'].get('name', 'custom')}` recipe "
                  "(`run.json` holds the full recipe).", ""]
    imports = ([f"from diffusers import AutoencoderTiny, {pipeline_class}"] if model_class == "AutoencoderTiny" else
               [f"from diffusers import {pipeline_class}", "from tinyae import TinyAutoencoder  # pip install tinyae"])
    lines += [
        "## Use it in diffusers",
        "",
        "```python",
        "import torch",
        *imports,
        "",
        f'pipe = {pipeline_class}.from_pretrained("{pipeline_repo}", torch_dtype=torch.{dtype}).to("cuda")',
        f'pipe.vae = {model_class}.from_pretrained("{repo_id}", torch_dtype=torch.{dtype}).to("cuda")',
        'image = pipe("a photo of a cat").images[0]',
        "```",
        "",
    ]
    if prefix is None:
        return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
    if prefix != info.prefix:
        lines += [
            "## TAESD pair",
            "",
            f"The `{prefix}_encoder` / `{prefix}_decoder` files are not in the layout ComfyUI, Forge and taesd.py "
            f"build for `{info.prefix}`, so they are named for no client to pick up; load them with "
            f"`tinyae.load_student`.",
            "",
        ]
        return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
    lines += [
        "## Use it in ComfyUI / Forge",
        "",
        "```bash",
        f"hf download {repo_id} {prefix}_encoder.safetensors {prefix}_decoder.safetensors "
        "--local-dir ComfyUI/models/vae_approx",
        f"hf download {repo_id} {prefix}_encoder.pth {prefix}_decoder.pth "
        "--local-dir stable-diffusion-webui-forge/models/VAE-taesd",
        "```",
        "",
        f"ComfyUI picks `{prefix}_decoder` for previews (`--preview-method taesd`) and offers the pair as the "
        f"`{prefix}` VAE; Forge uses it for live previews.",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def metrics_table(metrics: dict) -> str:
    """A two-column markdown table of the numbers in metrics.json (nested dicts flattened)."""
    rows = []
    for key, value in metrics.items():
        for name, number in (value.items() if isinstance(value, dict) else [(None, value)]):
            label = f"{key} {name}" if name is not None else key
            if number is None:
                rows.append(f"| {label} | n/a |")
            elif isinstance(number, (int, float)) and not isinstance(number, bool):
                rows.append(f"| {label} | {number:.4g} |" if isinstance(number, float) else f"| {label} | {number} |")
    return "\n".join(["| metric | value |", "|---|---|", *rows])


def describe_folder(folder: Path) -> str:
    sizes = {p.relative_to(folder): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    return "\n".join(f"  {name}  ({size / 1e6:.2f} MB)" if size >= 100_000 else f"  {name}  ({size / 1e3:.1f} kB)"
                     for name, size in sizes.items())


def push_to_hub(source: str | Path, repo_id: str, private: bool = False, dry_run: bool = False,
                token: str | None = None, family: str | None = None) -> Path:
    """Build `<source>-hub/` beside `source` and upload it to `repo_id`; returns the folder.

    `source` is a training output folder (student/, metrics.json, samples/, run.json) or an
    AutoencoderTiny folder. The upload folder is rebuilt on every call; files added to it and a model card
    edited in it are kept.
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ExportError(f"'{repo_id}' is not a Hub repo id; write it as USER/NAME.") from None
    if "/" not in repo_id:
        raise ExportError(f"'{repo_id}' has no namespace; write it as USER/NAME (or ORG/NAME).")
    folder = build_upload_folder(source, default_upload_folder(source), repo_id, family, overwrite=True)
    print(f"{'Would upload' if dry_run else 'Uploading'} {folder} to https://huggingface.co/{repo_id}:\n"
          f"{describe_folder(folder)}")
    if dry_run:
        return folder
    token = token or get_token()
    if not token:
        raise ExportError(f"No Hugging Face token: log in with `hf auth login` (or set HF_TOKEN) and push again; "
                          f"the upload folder is ready at {folder}.")
    try:
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="Upload tinyae student")
    except Exception as exc:  # offline, unreachable, 401/403: the message matters, not the type
        raise ExportError(upload_failure(repo_id, folder, exc)) from None
    print(f"Uploaded: {commit.commit_url}")
    return folder


def upload_failure(repo_id: str, folder: Path, exc: Exception) -> str:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    retry = f"the upload folder is ready at {folder} (retry, or `hf upload {repo_id} {folder}`)"
    if isinstance(exc, OfflineModeIsEnabled):
        return f"Nothing was uploaded to {repo_id} because HF_HUB_OFFLINE is set; unset it where the Hub is " \
               f"reachable: {retry}."
    if isinstance(exc, HfHubHTTPError) and exc.response is not None and exc.response.status_code in (401, 403):
        return f"The Hub refused the upload to {repo_id} (HTTP {exc.response.status_code}): check that your token " \
               f"has write access to that namespace; {retry}."
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"Could not upload to {repo_id} ({reason}); {retry}."
