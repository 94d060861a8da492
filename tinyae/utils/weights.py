"""Reading and writing flat state dicts safely: no pickled code runs, no overflowing cast is written."""

from __future__ import annotations

import io
import pickle
import pickletools
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from tinyae.errors import ExportError


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat dict of tensors from .safetensors, or from .pth/.pt/.bin with `torch.load(weights_only=True)`."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            state = load_file(path)
        elif path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise ExportError(f"'{path}' is neither .safetensors nor .pth/.pt: tinyae cannot read it.")
    except pickle.UnpicklingError:
        if not _is_pickle(path):
            raise corrupt(path) from None
        raise ExportError(f"'{path}' is a pickle that needs more than tensors to load, and tinyae reads weight "
                          "files with weights_only=True so they cannot run code; convert it to .safetensors "
                          "where you trust its source.") from None
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError) as exc:
        raise corrupt(path, exc) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExportError(f"'{path}' does not hold a flat state dict of tensors (name -> tensor).")
    return state


def _is_pickle(path: Path) -> bool:
    """Whether a file torch.load's safe unpickler refused is a real pickle (a torch.save zip, or a plain pickle
    stream that parses to its end) and not random or truncated bytes: only a real one can hold code."""
    if zipfile.is_zipfile(path):
        return True
    try:
        with open(path, "rb") as f:
            for _ in pickletools.genops(f):
                pass
    except Exception:  # noqa: BLE001 - any parse failure means the bytes are no pickle
        return False
    return True


def corrupt(path: str | Path, exc: BaseException | None = None) -> ExportError:
    """The one sentence for a weight file that cannot be parsed (truncated, damaged, not weights at all)."""
    why = f" ({str(exc).splitlines()[0][:200]})" if exc is not None and str(exc) else ""
    return ExportError(f"'{path}' is corrupt or truncated and holds no readable weights{why}; copy or export it "
                       "again.")


FIX_DIVERGED = "export a checkpoint from before its training diverged"


def refuse_non_finite(state: dict[str, torch.Tensor], source: str, fix: str = FIX_DIVERGED) -> None:
    """NaN or inf weights decode nothing but NaN: refuse them in one sentence (the run that wrote them diverged)."""
    bad = [key for key, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise ExportError(f"{source} has weights that are not finite numbers (NaN or inf in {bad[0]}{more}), so "
                          f"everything it decodes is NaN; {fix}.")


def cast_state(state: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies in `dtype`; refuses weights that overflow it (fp16 tops out at 65504)."""
    out = {key: (value.to(dtype) if dtype else value).detach().cpu().contiguous() for key, value in state.items()}
    if dtype is not None and dtype.is_floating_point and torch.finfo(dtype).max < 1e38:
        flat = torch.cat([value.flatten() for value in out.values() if value.is_floating_point()])
        if not torch.isfinite(flat).all():  # one check for all tensors: tiny ops are slow on a busy CPU
            refuse_non_finite(state, "The student")  # NaN before the cast: fp32 would not help
            key = next(k for k, v in out.items() if v.is_floating_point() and not torch.isfinite(v).all())
            raise ExportError(f"Weight '{key}' overflows {dtype}; export in fp32 (--dtype fp32) instead.")
    return out


def save_pth(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """torch.save through a buffer: the archive inside is then always named `archive`, not after the (temporary)
    file, so the same weights always give the same bytes and checksum."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    Path(path).write_bytes(buffer.getvalue())
