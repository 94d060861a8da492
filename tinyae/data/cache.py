"""Teacher cache: run the big VAE once per training crop, then train from disk.

The teacher dominates a distillation step (its encoder is ~9x the FLOPs of the
student's, its decoder ~18x). A cache stores, for sample index `i`, the crop
training would draw for `i` (same seed, zoom and flip), the teacher's
diffusion-space latents of it and, optionally, the teacher's reconstruction:

    DIR/index.json                  what the cache is for (teacher, factors, resolution, crop policy) + shards
    DIR/shard-000000.safetensors    images uint8 (n,3,R,R), latents float32 (n,C,R/f,R/f)[, targets uint8]
                                    (a video teacher's: clips (n,3,F,R,R) and latents (n,C,T,R/f,R/f))
    DIR/shard-000000.json           the shard's receipt: sha256 and size, written after the shard

Every file is written to a temporary name and renamed, and a shard counts as
finished only once its receipt exists, so a build killed at any moment resumes
by redoing at most the shards in flight; a reader refuses a shard whose size or
sha256 disagrees with its receipt.

Epochs and flips: training sample `j` reads cache sample `j mod N`. Flips are
decided per crop at build time and baked in (the teacher's latents of a flipped
image are not the flipped latents), so a cache smaller than a run repeats its
crops exactly; build as many samples as the run draws (steps x batch x
processes) for the variety of on-the-fly training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from tinyae.data.images import from_uint8, to_uint8
from tinyae.errors import DataError
from tinyae.models.latent_space import LatentSpace
from tinyae.utils.atomic import atomic_file, sha256_file

logger = logging.getLogger(__name__)

FORMAT, VERSION = "tinyae-teacher-cache", 1
INDEX = "index.json"
OPEN_SHARDS = 8  # safetensors handles kept per process


# --- identity ---------------------------------------------------------------------------------------------


def teacher_fingerprint(teacher) -> str:
    """sha256 of the teacher's weights (as float32, names sorted): the teacher's identity, whatever its name."""
    digest = hashlib.sha256()
    for name, tensor in sorted(teacher.vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def teacher_record(teacher) -> dict[str, Any]:
    return {
        "name": teacher.name,
        "fingerprint": teacher_fingerprint(teacher),
        "dtype": str(teacher.dtype).removeprefix("torch."),
        "scaling_factor": getattr(teacher, "scaling_factor", None),  # None unless the latent space is scalar
        "shift_factor": getattr(teacher, "shift_factor", None),
        "latent_space": teacher.latent_space.to_dict(),
        "latent_channels": teacher.latent_channels,
        "downscale": teacher.downscale,
    }


def _describe_teacher(t: dict) -> str:
    space = LatentSpace.from_dict(t["latent_space"]).describe() if "latent_space" in t else \
        f"scaling {t['scaling_factor']:g}, shift {t['shift_factor']:g}"
    return (f"teacher '{t['name']}' ({t['dtype']}, weights {t['fingerprint'][:12]}, latents {space}, "
            f"{t['latent_channels']} latent channels, f{t['downscale']})")


def check_teacher(recorded: dict, teacher, where: str) -> None:
    """Refuse a cache whose latents another teacher (or other factors) would not reproduce."""
    current = teacher_record(teacher)
    keys = ("latent_space" if "latent_space" in recorded else "scaling_factor", "shift_factor", "latent_channels",
            "downscale")  # caches written before latent spaces recorded their scalar factors only
    same_space = all(current[k] == recorded[k] for k in keys)
    # Weights cast to another dtype hash differently; then the name has to vouch for them.
    same_weights = (current["fingerprint"] == recorded["fingerprint"] if current["dtype"] == recorded["dtype"]
                    else current["name"] == recorded["name"])
    if not (same_space and same_weights):
        raise DataError(
            f"Teacher cache '{where}' was built with {_describe_teacher(recorded)}, but this run uses "
            f"{_describe_teacher(current)}. Rebuild it with `tinyae cache-latents` for this teacher, "
            "or drop data.cache to run the teacher on the fly."
        )


# --- files ------------------------------------------------------------------------------------------------


def _write_json(data: dict, target: Path) -> None:
    atomic_file(target, lambda p: p.write_text(json.dumps(data, indent=2) + "\n"), fsync=True)


def shard_name(k: int) -> str:
    return f"shard-{k:06d}.safetensors"


# --- building ---------------------------------------------------------------------------------------------


def cache_header(teacher, resolution: int, samples: int, shard_size: int, with_targets: bool,
                 crop_policy: dict, frames: int = 0) -> dict:
    """What a cache is for; `frames` > 0: a video teacher's clips of that many frames (latents with a time axis)."""
    side = resolution // teacher.downscale
    header = {
        "format": FORMAT, "version": VERSION, "teacher": teacher_record(teacher), "resolution": resolution,
        "latent_shape": [teacher.latent_channels, side, side],
        "crop_policy": crop_policy, "samples": samples, "shard_size": shard_size, "with_targets": with_targets,
    }
    if frames:
        header["frames"] = frames
    return json.loads(json.dumps(header))  # as it reads back from index.json


def num_shards(samples: int, shard_size: int) -> int:
    return math.ceil(samples / shard_size)


def start_cache(out: str | Path, header: dict) -> Path:
    """Create `out` with its header, or check that an existing cache there was started with the same one."""
    out = Path(out)
    index_path = out / INDEX
    if index_path.exists():
        for stale in out.glob(".*.tmp-*"):  # left by a killed build; never read
            stale.unlink(missing_ok=True)
        existing = read_index(out)
        ours = {k: v for k, v in existing.items() if k in header}
        if ours != header:
            diff = sorted(k for k in header if existing.get(k) != header[k])
            raise DataError(f"'{out}' holds a teacher cache built with other settings ({', '.join(diff)} differ); "
                            "choose another --out, or delete it to rebuild.")
        return out
    if out.exists() and any(out.iterdir()):
        raise DataError(f"'{out}' exists and is not a teacher cache; choose an empty or new --out folder.")
    out.mkdir(parents=True, exist_ok=True)
    _write_json(header | {"complete": False, "shards": []}, index_path)
    return out


def shard_done(out: Path, k: int) -> dict | None:
    """The receipt of shard `k` if the shard is finished (receipt present, size matching), else None."""
    receipt_path = out / shard_name(k).replace(".safetensors", ".json")
    shard = out / shard_name(k)
    if not (receipt_path.exists() and shard.exists()):
        return None
    receipt = json.loads(receipt_path.read_text())
    return receipt if shard.stat().st_size == receipt["bytes"] else None


@torch.no_grad()
def build_shard(out: Path, k: int, crops: torch.Tensor, teacher, with_targets: bool, batch_size: int,
                start: int) -> dict:
    """Encode one shard's crops with the teacher and write shard + receipt atomically."""
    latents, targets = [], []
    for chunk in crops.split(batch_size):
        z = teacher.encode(from_uint8(chunk).to(teacher.device)).float()
        latents.append(z.cpu())
        if with_targets:
            targets.append(to_uint8(teacher.decode(z)).cpu())
    tensors = {"images": crops.contiguous(), "latents": torch.cat(latents).contiguous()}
    if with_targets:
        tensors["targets"] = torch.cat(targets).contiguous()
    path = out / shard_name(k)
    atomic_file(path, lambda p: save_file(tensors, str(p), metadata={"start": str(start)}), fsync=True)
    receipt = {"file": path.name, "start": start, "count": len(crops), "bytes": path.stat().st_size,
               "sha256": sha256_file(path)}
    _write_json(receipt, path.with_suffix(".json"))
    return receipt


def build_cache(teacher, crops: Callable[[int, int], Iterable[torch.Tensor]], out: str | Path, resolution: int,
                samples: int, shard_size: int = 1024, with_targets: bool = False, crop_policy: dict | None = None,
                batch_size: int = 8, rank: int = 0, world_size: int = 1,
                progress: Callable[[int, int], None] | None = None, frames: int = 0) -> Path:
    """Build this process's shards (k = rank, rank + world_size, ...), skipping finished ones.

    `crops(start, count)` yields the crops (3, R, R) in [-1, 1] of sample indices [start, start + count), or with
    `frames` the clips (3, frames, R, R). Call `finish_cache` once every process is done (`tinyae cache-latents`
    does).
    """
    if samples <= 0 or shard_size <= 0:
        raise DataError("A teacher cache needs --samples and --shard-size above 0.")
    header = cache_header(teacher, resolution, samples, shard_size, with_targets, crop_policy or {}, frames)
    out = start_cache(out, header)
    total = num_shards(samples, shard_size)
    for k in range(rank, total, world_size):
        if shard_done(out, k) is None:
            start = k * shard_size
            count = min(shard_size, samples - start)
            images = torch.stack([to_uint8(crop) for crop in crops(start, count)])  # 1 byte a pixel in memory
            expected = (count, 3, *([frames] if frames else []), resolution, resolution)
            if tuple(images.shape) != expected:
                raise DataError(f"Crops for the cache are {tuple(images.shape)}, expected {expected}.")
            build_shard(out, k, images, teacher, with_targets, batch_size, start)
        if progress is not None:
            progress(k, total)
    return out


def finish_cache(out: str | Path) -> Path:
    """Collect the receipts into index.json and mark the cache complete (after every shard is built)."""
    out = Path(out)
    index = read_index(out)
    receipts = []
    for k in range(num_shards(index["samples"], index["shard_size"])):
        receipt = shard_done(out, k)
        if receipt is None:
            raise DataError(f"Shard {k} of the cache in '{out}' is missing or unfinished; re-run "
                            "`tinyae cache-latents` with the same arguments to finish it.")
        receipts.append(receipt)
    _write_json(index | {"complete": True, "shards": receipts}, out / INDEX)
    return out


def read_index(path: str | Path) -> dict:
    index_path = Path(path) / INDEX
    if not index_path.exists():
        raise DataError(f"'{path}' is not a teacher cache (no {INDEX}); build one with `tinyae cache-latents`.")
    index = json.loads(index_path.read_text())
    if index.get("format") != FORMAT or index.get("version") != VERSION:
        raise DataError(f"'{path}' holds a {index.get('format')} v{index.get('version')} cache; this tinyae reads "
                        f"{FORMAT} v{VERSION}: rebuild it with `tinyae cache-latents`.")
    return index


def verify_cache(path: str | Path) -> int:
    """Check every shard's size and sha256 against its receipt; returns the number of samples."""
    cache = TeacherCache(path)
    for k in range(len(cache.shards)):
        cache.verify_shard(k)
    return cache.samples


# --- reading ----------------------------------------------------------------------------------------------


class TeacherCache(Dataset):
    """Sample index -> {"images", "latents"[, "targets"]}; index `i` reads cache sample `i mod N`."""

    def __init__(self, path: str | Path, verify: bool = True):
        self.path = Path(path)
        self.index = read_index(self.path)
        if not self.index.get("complete"):
            raise DataError(f"The teacher cache in '{path}' is unfinished; re-run `tinyae cache-latents` with "
                            "the same arguments to complete it.")
        self.shards = self.index["shards"]
        self.samples, self.shard_size = self.index["samples"], self.index["shard_size"]
        self.resolution = self.index["resolution"]
        self.with_targets = self.index["with_targets"]
        self.verify = verify
        for receipt in self.shards:  # cheap; the sha256 is checked when a shard is first read
            file = self.path / receipt["file"]
            if not file.exists() or file.stat().st_size != receipt["bytes"]:
                raise DataError(f"Cache shard {file} is missing or truncated; delete it and its .json receipt "
                                "and re-run `tinyae cache-latents` with the same arguments.")
        self._handles: OrderedDict[int, Any] = OrderedDict()
        self._verified: set[int] = set()

    def __len__(self) -> int:
        return 2**62  # any index >= 0 works (modulo the cache size), like the on-the-fly crops

    def __getstate__(self) -> dict:  # DataLoader workers open their own handles
        return self.__dict__ | {"_handles": OrderedDict()}

    def verify_shard(self, k: int) -> None:
        receipt, file = self.shards[k], self.path / self.shards[k]["file"]
        if sha256_file(file) != receipt["sha256"]:
            raise DataError(f"Cache shard {file} does not match the sha256 in its receipt (corrupted); delete it "
                            "and its .json receipt and re-run `tinyae cache-latents` with the same arguments.")
        self._verified.add(k)

    def _handle(self, k: int):
        if k in self._handles:
            self._handles.move_to_end(k)
            return self._handles[k]
        if self.verify and k not in self._verified:
            self.verify_shard(k)
        handle = safe_open(str(self.path / self.shards[k]["file"]), framework="pt")
        self._handles[k] = handle
        if len(self._handles) > OPEN_SHARDS:
            self._handles.popitem(last=False)
        return handle

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = int(index) % self.samples
        k, row = divmod(i, self.shard_size)
        handle = self._handle(k)
        sample = {"images": from_uint8(handle.get_slice("images")[row]),
                  "latents": handle.get_slice("latents")[row]}
        if self.with_targets:
            sample["targets"] = from_uint8(handle.get_slice("targets")[row])
        return sample


def open_cache(path: str | Path, teacher, resolution: int, verify: bool = True, frames: int = 0) -> TeacherCache:
    """A finished cache, checked to hold this teacher's latents of `resolution`-px crops (clips of `frames`)."""
    cache = TeacherCache(path, verify=verify)
    if cache.index.get("frames", 0) != frames:
        held = f"clips of {cache.index['frames']} frames" if cache.index.get("frames") else "image crops"
        wanted = f"clips of {frames} frames" if frames else "image crops"
        raise DataError(f"Teacher cache '{path}' holds {held} but training asks for {wanted}; build a cache for "
                        "this recipe with `tinyae cache-latents`.")
    if cache.resolution != resolution:
        raise DataError(f"Teacher cache '{path}' holds {cache.resolution} px crops but training asks for "
                        f"{resolution} px; build a cache at {resolution} px (`tinyae cache-latents "
                        f"--resolution {resolution}`) or train at {cache.resolution} px.")
    check_teacher(cache.index["teacher"], teacher, str(path))
    if getattr(teacher, "sample", False):
        raise DataError(f"Teacher cache '{path}' holds posterior means, but teacher.sample is on (a new latent "
                        "sample every step); drop data.cache or teacher.sample.")
    return cache
