"""ONNX export of a student, and running it with ONNX Runtime.

`export_onnx` writes `encoder.onnx` and `decoder.onnx` (plus `encoder.fp16.onnx` and
`decoder.fp16.onnx` when asked) into a new folder, all or nothing. Each file is one half
of the student with dynamic batch, height and width:

    encoder: images  (N, 3, H, W) in [-1, 1]          -> latents (N, C, H/f, W/f)
    decoder: latents (N, C, h, w), diffusion-space    -> images  (N, 3, h*f, w*f) in [-1, 1]

with f the student's downscale factor (8, or 32 for the f32 layout); H and W must be
multiples of f. The fp16 files take and return float16 tensors. Each file carries its
architecture in its metadata (`tinyae.arch`, `tinyae.latent_channels`, `tinyae.downscale`),
so `OnnxStudent` (and any other runtime) can size its inputs without tinyae.

The graphs come from `torch.onnx.export(..., dynamo=True)`, the torch.export-based
exporter (the TorchScript one is deprecated since PyTorch 2.9); it needs `onnxscript`.
onnx, onnxscript and onnxruntime are the optional extra `tinyae[onnx]`.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from tinyae.errors import DependencyError, ExportError
from tinyae.models.student import Student
from tinyae.utils.atomic import atomic_folder

OPSET = 18
PARTS = {"encoder": ("images", "latents"), "decoder": ("latents", "images")}  # part -> (input name, output name)
ONNX_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
INSTALL_HINT = "pip install 'tinyae[onnx]' (onnx, onnxscript, onnxruntime)"


def require(module: str) -> ModuleType:
    """Import an optional dependency of the ONNX target, or say in one sentence how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DependencyError(f"ONNX export and ONNX Runtime need the '{module}' package: {INSTALL_HINT}.") from None


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter prints its progress and its graph passes log each step at INFO: keep warnings only."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def onnx_file_name(part: str, dtype: str = "fp32") -> str:
    return f"{part}.onnx" if dtype == "fp32" else f"{part}.{dtype}.onnx"


def write_onnx(student: Student, folder: str | Path, dtype: str = "fp32", opset: int = OPSET) -> list[Path]:
    """Write `<part>[.fp16].onnx` for the encoder and the decoder into an existing folder; returns the paths."""
    if dtype not in ONNX_DTYPES:
        raise ExportError(f"Unknown ONNX dtype '{dtype}'; pass {' or '.join(ONNX_DTYPES)}.")
    onnx = require("onnx")
    require("onnxscript")  # the exporter's own dependency: say so here rather than deep inside torch.onnx
    model = copy.deepcopy(student).float().cpu().eval().to(ONNX_DTYPES[dtype])
    f = model.downscale
    metadata = {"tinyae.arch": json.dumps(model.arch.to_dict()), "tinyae.latent_channels": str(model.latent_channels),
                "tinyae.downscale": str(f), "tinyae.dtype": dtype,
                "tinyae.images": "NCHW RGB in [-1, 1]", "tinyae.latents": "diffusion-space (scaling_factor 1.0)"}
    # Batch 2 and unequal sides: torch.export specialises a dimension whose example size is 1.
    examples = {"encoder": torch.zeros(2, 3, 2 * f, 3 * f), "decoder": torch.zeros(2, model.latent_channels, 2, 3)}
    paths = []
    for part, (input_name, output_name) in PARTS.items():
        path = Path(folder) / onnx_file_name(part, dtype)
        batch, height, width = (torch.export.Dim(name) for name in ("batch", "height", "width"))
        with torch.no_grad(), _quiet_exporter():
            program = torch.onnx.export(
                getattr(model, part), (examples[part].to(ONNX_DTYPES[dtype]),), input_names=[input_name],
                output_names=[output_name], dynamo=True, opset_version=opset, verbose=False,
                dynamic_shapes=({0: batch, 2: height, 3: width},))
        proto = program.model_proto
        for key, value in {**metadata, "tinyae.part": part}.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save_model(proto, str(path))
        paths.append(path)
    return paths


def export_onnx(student: Student, directory: str | Path, overwrite: bool = False, fp16: bool = False) -> Path:
    """A new folder with encoder.onnx and decoder.onnx (fp32), and their fp16 twins if `fp16`."""
    with atomic_folder(directory, overwrite) as tmp:
        for dtype in ("fp32", "fp16") if fp16 else ("fp32",):
            write_onnx(student, tmp, dtype)
    return Path(directory)


class OnnxStudent:
    """A student exported to ONNX, run by ONNX Runtime, with the Student's `encode`/`decode` on torch tensors.

    `threads` sets ONNX Runtime's intra-op threads (default: torch's current number, so the
    two backends compare on equal terms); inter-op parallelism is off, as in PyTorch eager.
    """

    def __init__(self, folder: str | Path, dtype: str = "fp32", threads: int | None = None):
        ort = require("onnxruntime")
        folder = Path(folder)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.sessions = {}
        for part in PARTS:
            path = folder / onnx_file_name(part, dtype)
            if not path.is_file():
                raise ExportError(f"'{folder}' has no {path.name}; write it with `tinyae export --to onnx`"
                                  f"{' --dtype fp16' if dtype == 'fp16' else ''}.")
            self.sessions[part] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = self.sessions["decoder"].get_modelmeta().custom_metadata_map
        self.latent_channels, self.downscale = int(meta["tinyae.latent_channels"]), int(meta["tinyae.downscale"])
        self.dtype = ONNX_DTYPES[dtype]

    def _run(self, part: str, x: torch.Tensor) -> torch.Tensor:
        input_name = PARTS[part][0]
        array = np.ascontiguousarray(x.detach().to("cpu", self.dtype).numpy())
        return torch.from_numpy(self.sessions[part].run(None, {input_name: array})[0])

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] % self.downscale or images.shape[-2] % self.downscale:
            raise ExportError(f"Images of {tuple(images.shape[-2:])} px are not a multiple of the student's "
                              f"downscale factor {self.downscale}.")
        return self._run("encoder", images)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self._run("decoder", latents)
