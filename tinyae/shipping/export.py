"""Export a student where people use it, atomically.

- diffusers: an AutoencoderTiny folder (config.json + diffusion_pytorch_model.safetensors),
  optionally with the fp16 variant (`from_pretrained(dir, variant="fp16")`), or a TinyAutoencoder
  folder where AutoencoderTiny cannot hold the layout or serve the family's pipelines (FLUX.2,
  Sana, Qwen-Image: tinyae.models.families);
- taesd: the original pair `<prefix>_encoder/_decoder` as .pth and .safetensors twins, named
  for the family (taesd, taesdxl, taesd3, taef1, taef2, taesana) so they drop into ComfyUI's
  models/vae_approx and Forge's models/VAE-taesd unchanged (ComfyUI has no Sana latent format: taesana
  is for taesd.py-style loaders and tinyae);
- all: both in one folder (the pair only for families that have one), which is also what the Hub gets;
- onnx: encoder.onnx and decoder.onnx (+ fp16 twins), dynamic height and width
  (tinyae.shipping.onnx; needs the `tinyae[onnx]` extra).

An fp16 export first runs the student on sample photos and warns if its activations
overflow fp16 (tinyae.models.precision): its fp16 files would decode NaN.

Folders are written into a hidden temporary sibling and renamed into place in one step, so an
interrupted export never leaves a half-written folder that a pipeline would load, and an
existing target is never replaced unless asked. A TAESD pair may go into an existing folder
(ComfyUI's), so its files are written beside their targets under hidden `.tmp` names (which
ComfyUI does not list) and renamed once all four are complete, after checking that none of
them exists. Temporaries a killed export left behind are removed by the next write there.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from tinyae.errors import ExportError
from tinyae.models.formats import FAMILIES, check_family, family_info, load_student, pair_prefix, to_taesd
from tinyae.models.precision import warn_if_fp16_overflows
from tinyae.models.student import Student
from tinyae.models.video_student import is_video_student
from tinyae.shipping.onnx import export_onnx
from tinyae.shipping.taehv import export_video_student
from tinyae.utils.atomic import atomic_files, atomic_folder, check_writable, reporting_write_errors
from tinyae.utils.dtypes import DTYPES, EXPORT_DTYPES
from tinyae.utils.weights import cast_state, refuse_non_finite, save_pth

TARGETS = ("diffusers", "taesd", "all", "onnx", "taehv")
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model*.safetensors",)  # an fp16 variant left over would load old weights


def taesd_file_names(prefix: str) -> list[str]:
    """The four files of a pair: .safetensors and .pth twins of the encoder and the decoder."""
    return [f"{prefix}_{role}.{ext}" for ext in ("safetensors", "pth") for role in ("encoder", "decoder")]


def taesd_prefix(student: Student, family: str, source: object = "the student") -> str:
    """The pair's prefix (tinyae.models.formats.pair_prefix), with a warning when no client will load it."""
    check_family(student, family, source)
    prefix, published = pair_prefix(student, family), family_info(family).prefix
    if prefix != published:
        warnings.warn(f"{source} is not in the '{family_info(family).variant}' layout that ComfyUI, Forge and "
                      f"taesd.py build for {published}_*, so its pair is written as {prefix}_*, a name no client "
                      f"picks up (a {published}_* file of this layout would crash ComfyUI's previews); "
                      "tinyae.load_student reads it. For ComfyUI, distill with --student.size tiny.", stacklevel=3)
    return prefix


def write_taesd(student, folder: Path, prefix: str, dtype: torch.dtype | None = None) -> list[Path]:
    """The four files of the pair, renamed into `folder` together once all are written."""
    encoder, decoder = to_taesd(cast_state(student.state_dict(), dtype))
    names = taesd_file_names(prefix)
    with atomic_files(folder) as stage:
        for name, state in zip(names, (encoder, decoder, encoder, decoder)):
            if name.endswith(".safetensors"):
                save_file(state, stage(name), metadata={"format": "pt"})
            else:
                save_pth(state, stage(name))
    return [Path(folder) / name for name in names]


def export_diffusers(student: Student, directory: str | Path, overwrite: bool = False,
                     dtype: torch.dtype | None = None, extra: Callable[[Path], None] | None = None,
                     fp16_variant: bool = False, family: str | None = None) -> Path:
    """Write an AutoencoderTiny (or TinyAutoencoder) folder: config.json + diffusion_pytorch_model.safetensors
    (+ the fp16 variant); `family` makes it work as `pipe.vae` in that family's pipelines."""
    with atomic_folder(directory, overwrite, DIFFUSERS_WEIGHTS) as tmp:
        student.write_pretrained(tmp, dtype, fp16_variant, family)
        if extra is not None:
            extra(tmp)
    return Path(directory)


def export_taesd(student, directory: str | Path, family: str, dtype: torch.dtype | None = None,
                 overwrite: bool = False) -> list[Path]:
    """Write the TAESD pair (.safetensors and .pth) into `directory`, which may exist (e.g. models/vae_approx)."""
    directory = Path(directory)
    prefix = taesd_prefix(student, family)
    names = taesd_file_names(prefix)
    existing = [name for name in names if (directory / name).exists()]
    if existing and not overwrite:
        raise ExportError(f"'{directory / existing[0]}' already exists; pass --overwrite to replace the pair "
                          "(other files there are kept), or choose another folder.")
    with reporting_write_errors(directory / names[0], what=f"the {prefix} pair"):
        return write_taesd(student, directory, prefix, dtype)


def export_all(student, directory: str | Path, family: str, dtype: torch.dtype | None = None,
               overwrite: bool = False, extra: Callable[[Path], None] | None = None) -> Path:
    """One folder for every consumer: the diffusers files plus the TAESD pair (for families that have one).

    With dtype fp16 the pair is stored in fp16 and the diffusers weights get their fp16
    variant, while the main diffusers file stays fp32 so nothing is lost by default.
    """
    half = dtype == torch.float16
    with atomic_folder(directory, overwrite, DIFFUSERS_WEIGHTS) as tmp:
        student.write_pretrained(tmp, fp16_variant=half, family=family)
        if family_info(family).prefix is not None:
            write_taesd(student, tmp, taesd_prefix(student, family), dtype)
        else:
            check_family(student, family)
        if extra is not None:
            extra(tmp)
    return Path(directory)


def run_info(source: str | Path) -> dict:
    """The run.json a training run wrote next to (or above) a student or checkpoint folder, else {}."""
    source = Path(source).resolve()
    for folder in [source, *source.parents][:4]:
        if (folder / "run.json").is_file():
            return json.loads((folder / "run.json").read_text())
    return {}


def _saved_family(source: str | Path) -> str | None:
    """The family an image student's TinyAutoencoder config names (so --to taehv can say what to do instead)."""
    for folder in (Path(source), Path(source) / "student"):
        if (folder / "config.json").is_file():
            return json.loads((folder / "config.json").read_text()).get("family")
    return None


def checkpoint_student(checkpoint: str | Path) -> Path:
    """A training checkpoint keeps its EMA student in AutoencoderTiny layout under `student_ema/`."""
    folder = Path(checkpoint) / "student_ema"
    if not (folder / "config.json").is_file():
        raise ExportError(f"'{checkpoint}' has no student_ema/ folder: pass a checkpoint-N folder written by "
                          "`tinyae distill`, or use --student for an AutoencoderTiny folder.")
    return folder


def export_student(source: str | Path, to: str = "all", family: str | None = None, dtype: str = "fp32",
                   out: str | Path | None = None, overwrite: bool = False, model: str | None = None) -> Path:
    """Load a student from any known layout and export it; the default target is `<source>-<to>` beside it.

    `to="taehv"` takes a video student (tinyae.shipping.taehv) and `model` names its published layout."""
    if to not in TARGETS:
        raise ExportError(f"Unknown export target '{to}'; pass one of {', '.join(TARGETS)}.")
    if to == "taehv":
        if family is None and not is_video_student(source):  # only to say what to do with an image student
            family = run_info(source).get("family") or _saved_family(source)
        return export_video_student(source, model, dtype, out, overwrite, family)
    if dtype not in EXPORT_DTYPES:
        raise ExportError(f"Unknown dtype '{dtype}'; pass {' or '.join(EXPORT_DTYPES)}.")
    source = Path(source)
    out = Path(out) if out else source.resolve().with_name(f"{source.resolve().name}-{to}")
    check_writable(out, "--out")  # before loading anything
    family = family or run_info(source).get("family")
    student = load_student(source, family)  # the family picks its pair in a folder of several
    refuse_non_finite(student.state_dict(), f"'{source}'")  # before the fp16 check, which would blame fp16
    family = family or student.family
    if family is None and to in ("taesd", "all"):
        raise ExportError(f"No run.json near '{source}' says which family the student belongs to; pass --family "
                          f"({', '.join(FAMILIES)}): the TAESD file names depend on it.")
    if family is not None:
        check_family(student, family, f"'{source}'")
    if dtype == "fp16":
        warn_if_fp16_overflows(student)
    if to == "onnx":
        export_onnx(student, out, overwrite, fp16=dtype == "fp16")
    elif to == "diffusers":
        export_diffusers(student, out, overwrite, fp16_variant=dtype == "fp16", family=family)
    elif to == "taesd":
        export_taesd(student, out, family, DTYPES[dtype], overwrite)
    else:
        export_all(student, out, family, DTYPES[dtype], overwrite)
    return out
