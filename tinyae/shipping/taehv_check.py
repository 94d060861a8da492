"""Check exported TAEHV files with the loaders people use: ComfyUI's and madebyollin/taehv's own code.

Both are imported, unmodified, from a checkout the caller names (tinyae ships neither):

- ComfyUI: `comfy.utils.load_torch_file` + `comfy.sd.VAE(sd=...)`, the path its VAELoader and its
  latent previews take for files in models/vae_approx. `VAE.decode` takes ComfyUI's latents and
  converts them with the latent format it picked for the file (`first_stage_model.process_in`), so
  tinyae decodes that converted latent and the frames must agree;
- taehv.py: `TAEHV("<name>.pth")`, which picks the layout from the file name, then its
  `encode_video` / `decode_video` against tinyae's on the same frames and latents, and its cheap
  preview decoders (`decoder_time_upscale=(False, False)`, and with the first stage's spatial
  upscaling off) against `VideoStudent.for_previews`. A layout the checkout does not build (the
  wide LTX-2.3 decoder lives on a branch; ComfyUI's LeakyReLU lighttaehy1_5 is not upstream's) is
  reported as skipped.

A file a loader fails on is reported with the error instead of a difference.

Each file is compared with tinyae's decode of the same file (an fp16 file: fp16 weights in both),
and ComfyUI runs on the CPU (its `--cpu`).
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

import torch

from tinyae.errors import ExportError
from tinyae.models.video_student import VideoStudent, load_video_student, video_model
from tinyae.shipping.taehv import COMFYUI_FOLDER, export_taehv
from tinyae.utils.weights import read_weights


def import_comfyui(checkout: str | Path):
    """ComfyUI's `comfy.sd` and `comfy.utils` from a checkout, set to run on the CPU as `--cpu` does."""
    checkout = Path(checkout).resolve()
    if not (checkout / "comfy" / "sd.py").is_file():
        raise ExportError(f"'{checkout}' is not a ComfyUI checkout (no comfy/sd.py); pass the folder of a clone of "
                          "comfyanonymous/ComfyUI.")
    sys.path.insert(0, str(checkout))
    try:
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
        import comfy.sd
        import comfy.utils
    except ImportError as exc:
        raise ExportError(f"ComfyUI at '{checkout}' could not be imported ({exc}); install its requirements.txt "
                          "into this environment first.") from None
    return comfy.sd, comfy.utils


def import_taehv(checkout: str | Path):
    """The `taehv` module (taehv.py) of a madebyollin/taehv checkout."""
    path = Path(checkout).resolve() / "taehv.py"
    if not path.is_file():
        raise ExportError(f"'{checkout}' has no taehv.py; pass the folder of a clone of madebyollin/taehv.")
    spec = importlib.util.spec_from_file_location("taehv", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def check_comfyui(checkout: str | Path, folder: str | Path, seed: int = 0, files: list[Path] | None = None
                  ) -> list[dict]:
    """Decode a latent with ComfyUI's loader for every file in `folder`/comfyui (or `files`); one result per file."""
    comfy_sd, comfy_utils = import_comfyui(checkout)
    results = []
    files = files or sorted(p for p in (Path(folder) / COMFYUI_FOLDER).glob("*")
                            if p.suffix in (".pth", ".safetensors"))
    if not files:
        raise ExportError(f"'{folder}' has no {COMFYUI_FOLDER}/ files: export a model ComfyUI loads (taew2_1, "
                          "taew2_2, taehv) with `tinyae export --to taehv`.")
    for path in files:
        try:
            vae = comfy_sd.VAE(sd=comfy_utils.load_torch_file(str(path)))
            model = vae.first_stage_model
            model.show_progress_bar = False
        except Exception as exc:  # noqa: BLE001 - an old checkout may lack the layout: report it, check the rest
            results.append(dict(file=path.name, error=" ".join(f"{type(exc).__name__}: {exc}".split())[:200]))
            continue
        student = load_video_student(path).eval()  # the same file, read by tinyae
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(1, student.arch.latent_channels, 7 if student.arch.h3_chunks else 3, 4, 4, generator=g)
        theirs = vae.decode(z).float()  # (B, T, H, W, 3)
        ours = student.decode_frames01(model.process_in(z).transpose(1, 2)).permute(0, 1, 3, 4, 2)
        if student.arch.signed_output:  # ComfyUI maps a [-1, 1] decoder's frames to [0, 1] with a clamp
            ours = ours.clamp(0, 1)
        results.append(dict(file=path.name, loader=f"{type(model).__module__}.{type(model).__name__}",
                            dtype=str(next(iter(comfy_utils.load_torch_file(str(path)).values())).dtype),
                            latent_format=getattr(model.latent_format, "__name__", "none"),
                            frames=tuple(theirs.shape), max_abs_diff=float((theirs - ours).abs().max())))
    return results


UPSTREAM_BLOCKS = {"super": "SuperMemBlock", "wide": "WideMemBlock"}  # what a checkout needs for each variant


@torch.no_grad()
def check_upstream(checkout: str | Path, folder: str | Path, name: str, seed: int = 0) -> dict:
    """Upstream taehv.py loads `<name>.pth` strictly and encodes and decodes as tinyae does (its outputs clamped to
    [0, 1]), also with its cheap preview switches."""
    taehv = import_taehv(checkout)
    path = Path(folder) / f"{name}.pth"
    student = load_video_student(path).float().eval()
    arch = student.arch
    needed = UPSTREAM_BLOCKS.get(arch.decoder_variant)
    if arch.act_fn != "relu" or (needed and not hasattr(taehv, needed)):
        return dict(file=path.name, skipped="this taehv.py does not build the layout")
    upstream = taehv.TAEHV(str(path)).float().eval()  # load_state_dict is strict
    g = torch.Generator().manual_seed(seed)
    side = 4 * arch.downscale
    video = torch.rand(1, 1 + 2 * arch.time_downscale, 3, side, side, generator=g)
    z = torch.randn(1, 7 if arch.h3_chunks else 3, arch.latent_channels, 4, 4, generator=g)
    theirs = upstream.encode_video(video, show_progress_bar=False)
    encode = max((upstream.encode_video(video, parallel=parallel, show_progress_bar=False)
                  - student.encode_frames01(video, parallel=parallel)).abs().max() for parallel in (True, False))
    frames = upstream.decode_video(z, show_progress_bar=False)
    decode = max((upstream.decode_video(z, parallel=parallel, show_progress_bar=False)
                  - student.decode_frames01(z, parallel=parallel).clamp(0, 1)).abs().max()
                 for parallel in (True, False))
    # taehv.py sets an LTX file's time strides from its name, over the switches: only space is switchable there
    previews = [] if arch.time_downscale == 8 else [dict(decoder_time_upscale=(False, False))]
    if arch.decoder_variant != "super":
        previews.append(dict(decoder_space_upscale=(False, True, True)))
    preview = max((taehv.TAEHV(str(path), **switches).float().eval().decode_video(z, show_progress_bar=False)
                   - student.for_previews(**switches).decode_frames01(z).clamp(0, 1)).abs().max()
                  for switches in previews)
    return dict(file=path.name, dtype=str(next(iter(read_weights(path).values())).dtype),
                frames_in=video.shape[1], latents=tuple(theirs.shape), frames_out=frames.shape[1],
                tinyae_frames_out=arch.decoded_frames(z.shape[1]), encode_max_abs_diff=float(encode),
                decode_max_abs_diff=float(decode), preview_decode_max_abs_diff=float(preview))


def seeded_student(name: str, seed: int = 0) -> VideoStudent:
    """A student of the published layout with random weights scaled so every layer stays in range: the check then
    tells layouts apart, which default initialisation (outputs near 0.5 everywhere) would hide."""
    student = VideoStudent.published(name)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in student.parameters():
            fan_in = param[0].numel() if param.ndim > 1 else 100
            param.copy_(torch.randn(param.shape, generator=g) / fan_in ** 0.5)
    return student.eval()


# The largest difference from tinyae's frames a file may show, by its dtype: fp32 files differ only by the order
# of float operations, fp16 ones by fp16 rounding through ~20 layers.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}


def failures(results: dict[str, list[dict]], tolerance: float | None = None) -> list[str]:
    """Every difference above `tolerance` (default: TOLERANCE by the file's dtype) or not a number, described."""
    bad = []
    for loader, rows in results.items():
        for row in rows:
            limit = tolerance if tolerance is not None else TOLERANCE["fp16" if "16" in row.get("dtype", "") else
                                                                      "fp32"]
            for key, value in row.items():
                if key.endswith("max_abs_diff") and not value <= limit:  # NaN fails too
                    bad.append(f"{loader} {row['file']} {key}={value} (tolerance {limit:g})")
    return bad


def run_checks(comfyui: str | Path | None, taehv: str | Path | None, models: list[str], student: str | Path | None,
               dtype: str = "fp32") -> dict[str, list[dict]]:
    """Export each model (the given student, or a seeded random one of its layout) into a temporary folder and
    check the files with ComfyUI's loader and/or upstream taehv.py. A student with weights that are not finite,
    or of another latent space than a model, is refused by the export."""
    results: dict[str, list[dict]] = {"comfyui": [], "taehv.py": []}
    given = load_video_student(student) if student else None
    for name in models:
        model = given if given is not None else seeded_student(name)
        published = video_model(name)
        # taehv's own file is also ComfyUI's, which reads a 16-channel fp32 file as Wan 2.1's: it is fp16 only
        own_dtype = "fp16" if published.comfyui_name == name and published.comfyui_fp16 else dtype
        with tempfile.TemporaryDirectory() as folder:
            export_taehv(model, folder, name, own_dtype)
            if comfyui is not None and (Path(folder) / COMFYUI_FOLDER).is_dir():
                results["comfyui"] += check_comfyui(comfyui, folder)
            if comfyui is not None and published.comfyui_misreads_as:  # shows what the export warns about
                for row in check_comfyui(comfyui, folder, files=[Path(folder) / f"{name}.safetensors"]):
                    results["comfyui"].append(row | dict(note=f"read as {published.comfyui_misreads_as}"))
            if taehv is not None:
                results["taehv.py"].append(check_upstream(taehv, folder, name))
    return results


def format_results(results: list[dict]) -> str:
    return "\n".join("  ".join(f"{k}={v}" for k, v in r.items()) for r in results)
