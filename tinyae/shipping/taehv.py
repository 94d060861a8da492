"""Export a video student as TAEHV files: what taehv.py and ComfyUI load.

- `<name>.pth` and `<name>.safetensors` (name: taew2_1, taehv, taew2_2, ...), in the dtype asked
  for: madebyollin/taehv's `TAEHV("<name>.pth")` picks the layout from the file name;
- where ComfyUI has a TAEHV path for the model, `comfyui/<comfyui name>.pth` and `.safetensors`
  (lighttaew2_1, lighttaew2_2, taehv, lighttaehy1_5, taeltx_2, taeh3) for its models/vae_approx,
  whose VAELoader takes only those exact names (taeltx2_3's copy is `taeltx_2`: same layout). ComfyUI
  (comfy/sd.py) tells a 16-channel file's latent space by its dtype: fp16 is HunyuanVideo's (it
  scales the latents), fp32 Wan 2.1's (it does not), so those files are written in the dtype that
  names their space (tinyae.models.video_student.VIDEO_MODELS). The `_super` and wide decoders, CogVideoX
  and Open-Sora have no ComfyUI path, so no copy.

ComfyUI picks a layout by shapes alone, so a ReLU `taehv1_5` file put into ComfyUI is built as its
LeakyReLU `lighttaehy1_5` and decodes other frames: that export warns (`--model lighttaehy1_5`, a
student trained with LeakyReLU, is the file ComfyUI reads right).

A family whose clients preview it with a TAEHV file exports as that model: `qwen-image` as
taew2_1 (Qwen-Image's VAE is Wan 2.1's; ComfyUI's Qwen-Image previewer loads lighttaew2_1), from a
video student of the wan2.1 teacher. An image student cannot become such a file (see
`refuse_image_student`).

The files go into a folder that may exist; they are written under hidden temporary names and
renamed in together, folder by folder, once all are complete (tinyae.utils.atomic), and an existing file is only
replaced with `overwrite`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from safetensors.torch import save_file

from tinyae.errors import ExportError
from tinyae.models.families import FAMILIES, family_info
from tinyae.models.video_student import VIDEO_MODELS, VideoStudent, is_video_student, load_video_student, video_model
from tinyae.models.video_teacher import space_vae_class
from tinyae.utils.atomic import EXISTS, atomic_files, check_writable, reporting_write_errors
from tinyae.utils.dtypes import DTYPES, EXPORT_DTYPES
from tinyae.utils.weights import cast_state, refuse_non_finite, save_pth

COMFYUI_FOLDER = "comfyui"


def taehv_files(name: str, dtype: str) -> dict[str, str]:
    """{relative path: dtype name} of the files written for the model `name`."""
    model = video_model(name)
    files = {f"{name}.{ext}": dtype for ext in ("safetensors", "pth")}
    if model.comfyui_name is not None:
        comfy_dtype = dtype if model.comfyui_fp16 is None else ("fp16" if model.comfyui_fp16 else "fp32")
        files |= {f"{COMFYUI_FOLDER}/{model.comfyui_name}.{ext}": comfy_dtype for ext in ("safetensors", "pth")}
    return files


def check_layout(student: VideoStudent, name: str) -> None:
    """The student must have the published model's layout where loaders build it from the name or the channels."""
    expected = video_model(name).arch
    arch = student.arch
    if (arch.latent_channels, arch.patch_size, arch.encoder_time_downscale, arch.decoder_time_upscale) != (
            expected.latent_channels, expected.patch_size, expected.encoder_time_downscale,
            expected.decoder_time_upscale):
        fitting = [n for n in VIDEO_MODELS if _fits(arch, n)]
        instead = f"pass --model with one of: {', '.join(fitting)}" if fitting else "no published layout matches it"
        raise ExportError(f"The student has {arch.latent_channels} latent channels, patch {arch.patch_size} and "
                          f"time factor {arch.time_downscale}, but taehv.py builds '{name}' with "
                          f"{expected.latent_channels}, {expected.patch_size} and {expected.time_downscale}; {instead}.")
    if (arch.encoder_width, arch.decoder_widths, arch.decoder_variant) != (
            expected.encoder_width, expected.decoder_widths, expected.decoder_variant):
        raise ExportError(f"The student's widths ({arch.encoder_width}, {arch.decoder_widths}, {arch.decoder_variant} "
                          f"decoder) are not the published ones ({expected.encoder_width}, {expected.decoder_widths}, "
                          f"{expected.decoder_variant}) that taehv.py and ComfyUI build for '{name}', so they could "
                          "not load it; export it as a VideoStudent folder instead.")
    behaviour = ("act_fn", "h3_chunks", "signed_output", "decoder_space_upscale", "keep_frames_for_even_latents")
    differing = [f"{field} {getattr(arch, field)} (its loaders: {getattr(expected, field)})" for field in behaviour
                 if getattr(arch, field) != getattr(expected, field)]
    if differing:
        raise ExportError(f"The student computes other frames than '{name}' as its loaders build it "
                          f"({'; '.join(differing)}); export it under the model of its layout or as a folder.")


def refuse_other_latent_space(student: VideoStudent, name: str, who: str = "--model") -> None:
    """A TAEHV file's name tells loaders its latent space (ComfyUI decodes a 'taehv' file as HunyuanVideo's
    latents): a student distilled in another space must not be written or checked under it."""
    model = video_model(name)
    if student.taehv_name is not None and video_model(student.taehv_name).teacher != model.teacher:
        raise ExportError(f"{who} '{name}' stands for {model.note}'s latent space, but the student was distilled "
                          f"for '{student.taehv_name}' ({video_model(student.taehv_name).note}): loaders would "
                          f"decode other latents with it; export it as {student.taehv_name} (or drop {who}).")
    vae_class = space_vae_class(name)
    if student.teacher_class and vae_class not in (None, student.teacher_class):
        raise ExportError(f"{who} '{name}' stands for {model.note} ({vae_class}), but the student was "
                          f"distilled from '{student.teacher}', an {student.teacher_class}: loaders would decode "
                          "other latents with it; export it under the model of its teacher's latent space.")


def _fits(arch, name: str) -> bool:
    other = video_model(name).arch
    return (other.latent_channels, other.patch_size, other.time_downscale) == (
        arch.latent_channels, arch.patch_size, arch.time_downscale)


def export_taehv(student: VideoStudent, directory: str | Path, name: str | None = None, dtype: str = "fp16",
                 overwrite: bool = False) -> list[Path]:
    """Write the student's TAEHV files (see the module docstring) into `directory`; returns their paths."""
    name = name or student.taehv_name
    if name is None:
        raise ExportError(f"The student does not say which published model it stands for; pass --model "
                          f"({', '.join(VIDEO_MODELS)}): the file names tell loaders its layout and latent space.")
    if dtype not in EXPORT_DTYPES:
        raise ExportError(f"Unknown dtype '{dtype}'; pass {' or '.join(EXPORT_DTYPES)}.")
    refuse_other_latent_space(student, name)  # the file's name says which latents it reads: first
    check_layout(student, name)
    model = video_model(name)
    if model.comfyui_name == name and model.comfyui_fp16 is not None and model.comfyui_fp16 != (dtype == "fp16"):
        needed = "fp16" if model.comfyui_fp16 else "fp32"
        raise ExportError(f"ComfyUI reads a {model.arch.latent_channels}-channel '{name}' file in {dtype} as another "
                          f"model's latent space; export '{name}' with --dtype {needed}.")
    refuse_non_finite(student.state_dict(), "The video student")
    if model.comfyui_misreads_as is not None:
        warnings.warn(f"ComfyUI builds any {model.arch.latent_channels}-channel file like '{name}' as "
                      f"'{model.comfyui_misreads_as}' ({video_model(model.comfyui_misreads_as).note}) and decodes "
                      f"other frames from it: use the '{name}' files with taehv.py only, or train and export a "
                      f"'{model.comfyui_misreads_as}' student for ComfyUI.", stacklevel=2)
    directory = Path(directory)
    files = taehv_files(name, dtype)
    existing = [path for path in files if (directory / path).exists()]
    if existing and not overwrite:
        raise ExportError(f"'{directory / existing[0]}' {EXISTS}.")
    states = {d: cast_state(student.state_dict(), DTYPES[d]) for d in set(files.values())}
    with reporting_write_errors(directory / next(iter(files)), what=f"the {name} files"):
        for folder in sorted({Path(path).parent for path in files}):
            group = {path: d for path, d in files.items() if Path(path).parent == folder}
            with atomic_files(directory / folder) as stage:
                for path, d in group.items():
                    target = stage(Path(path).name)
                    if path.endswith(".safetensors"):
                        save_file(states[d], target, metadata={"format": "pt"})
                    else:
                        save_pth(states[d], target)
    return [directory / path for path in files]


def family_model(family: str, name: str | None, student: VideoStudent | None = None) -> str:
    """The TAEHV model a family is previewed with (qwen-image: taew2_1), refusing a --model or a student of
    another latent space: ComfyUI would read the family's latents with it and show wrong colours."""
    info = family_info(family)
    if info.taehv_model is None:
        with_one = [f for f, i in FAMILIES.items() if i.taehv_model]
        raise ExportError(f"Family '{family}' has no TAEHV file that clients load (families that do: "
                          f"{', '.join(with_one)}); export --to taehv with --model instead.")
    for who, other in (("--model", name), ("The student", student.taehv_name if student else None)):
        if other is not None and other != info.taehv_model:
            raise ExportError(f"{who} stands for '{other}' ({video_model(other).note}), but the {family} family "
                              f"is previewed with '{info.taehv_model}' ({video_model(info.taehv_model).note}), "
                              "whose latents it would misread; export a student of that latent space.")
    return info.taehv_model


def refuse_image_student(source: Path, family: str | None) -> None:
    """An image student (TAESD layout) is no TAEHV file, and cannot be made one: say why and what works."""
    info = family_info(family) if family else None
    if info is not None and info.taehv_model is not None:
        model = video_model(info.taehv_model)
        raise ExportError(
            f"'{source}' is an image student (TAESD layout), which cannot be written as the {info.taehv_model} file "
            f"the {family} family is previewed with: TAEHV's decoder has no residual block at full resolution and its "
            "encoder no block after the first conv, so no TAEHV weights reproduce it; distill a video student against "
            f"{model.teacher} (the VAE {info.name} shares) and export that with --to taehv --family {family}.")
    raise ExportError(f"'{source}' is not a video student: --to taehv takes a VideoStudent folder, a training output "
                      "of one or a TAEHV file; export an image student with --to diffusers or --to taesd.")


def export_video_student(source: str | Path, name: str | None = None, dtype: str = "fp16",
                         out: str | Path | None = None, overwrite: bool = False, family: str | None = None) -> Path:
    """Load a video student (folder or TAEHV file) and export its TAEHV files; default target `<source>-taehv`.

    `family` (e.g. qwen-image) picks the model its clients preview it with, and an image student of it is
    refused in one sentence that says why and what to export instead."""
    source = Path(source)
    if not is_video_student(source):
        refuse_image_student(source, family)
    out = Path(out) if out else source.resolve().with_name(f"{source.resolve().stem}-taehv")
    check_writable(out, "--out")
    student = load_video_student(source)
    if family is not None:
        name = family_model(family, name, student)
    export_taehv(student, out, name, dtype, overwrite)
    return out
