"""Images for distillation: a recursive folder, random crops addressed by sample index.

Sample `i` is a pure function of (seed, i): which image, where the crop is and
whether it is flipped. Training at step `s` asks for a fixed range of indices,
so a resumed run sees exactly the batches an uninterrupted one would, and
processes of a multi-process run read disjoint indices without coordination.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler

from tinyae.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp"}
BAD_IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def list_images(root: str | Path) -> list[Path]:
    """All image files under `root`, sorted; a clear error if there are none."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Image folder '{root}' does not exist; pass --data DIR with a folder of jpg/png/webp images.")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise DataError(f"Image folder '{root}' holds no jpg, jpeg, png or webp files (searched recursively).")
    return files


def load_rgb(path: str | Path) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return img.convert("RGB")


def scan_images(root: str | Path) -> tuple[list[Path], list[Path]]:
    """Split a folder into readable and unreadable images, warning once per bad file."""
    good, bad = [], []
    for path in list_images(root):
        try:
            with Image.open(path) as img:
                img.verify()
            good.append(path)
        except BAD_IMAGE_ERRORS as exc:
            warnings.warn(f"Skipping unreadable image {path}: {exc}", stacklevel=2)
            bad.append(path)
    if not good:
        raise DataError(f"None of the {len(bad)} image files under '{root}' could be read.")
    return good, bad


def split_holdout(files: list[Path], holdout: int) -> tuple[list[Path], list[Path]]:
    """Deterministic train/held-out split: every k-th image is held out, so both span the folder."""
    if holdout <= 0:
        return list(files), []
    if holdout >= len(files):
        raise DataError(f"Asked to hold out {holdout} images but the folder has only {len(files)}; "
                        "lower data.holdout or add images.")
    step = len(files) / holdout
    held = {int(i * step + step / 2) for i in range(holdout)}
    return [f for i, f in enumerate(files) if i not in held], [f for i, f in enumerate(files) if i in held]


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float tensor (3, H, W) in [-1, 1]."""
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    return arr.float().div(127.5).sub(1)


def to_pil(x: torch.Tensor) -> Image.Image:
    """Tensor (3, H, W) in [-1, 1] -> PIL RGB."""
    arr = x.detach().float().clamp(-1, 1).add(1).mul(127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


def random_crop(img: Image.Image, size: int, gen: torch.Generator, max_zoom_out: float = 2.0,
                hflip: bool = True) -> torch.Tensor:
    """Resize the short side into [size, size*max_zoom_out] (never upscaling past need), crop, maybe flip."""
    w, h = img.size
    short = min(w, h)
    hi = max(size, min(short, size * max_zoom_out))
    target = size + (hi - size) * torch.rand((), generator=gen).item()
    scale = target / short
    if abs(scale - 1) > 1e-3:
        img = img.resize((max(size, math.ceil(w * scale)), max(size, math.ceil(h * scale))), Image.BICUBIC)
    w, h = img.size
    left = int(torch.randint(0, w - size + 1, (), generator=gen))
    top = int(torch.randint(0, h - size + 1, (), generator=gen))
    x = to_tensor(img.crop((left, top, left + size, top + size)))
    if hflip and torch.rand((), generator=gen).item() < 0.5:
        x = x.flip(-1)
    return x


def center_crop(img: Image.Image, size: int) -> torch.Tensor:
    """Resize the short side to `size` and take the centre square: the evaluation view."""
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return to_tensor(img.crop((left, top, left + size, top + size)))


class RandomCrops(Dataset):
    """Sample index -> (3, size, size) crop in [-1, 1]; length is nominal, any index >= 0 works."""

    def __init__(self, files: list[Path], size: int, seed: int = 0, max_zoom_out: float = 2.0, hflip: bool = True):
        if not files:
            raise DataError("No training images left after the held-out split; add images or lower data.holdout.")
        self.files = list(files)
        self.size, self.seed, self.max_zoom_out, self.hflip = size, seed, max_zoom_out, hflip
        self.bad: set[int] = set()

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, index: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(index))
        choice = int(torch.randint(0, len(self.files), (), generator=gen))
        for attempt in range(len(self.files)):
            k = (choice + attempt) % len(self.files)
            if k in self.bad:
                continue
            try:
                img = load_rgb(self.files[k])
            except BAD_IMAGE_ERRORS as exc:
                self.bad.add(k)
                warnings.warn(f"Skipping unreadable image {self.files[k]}: {exc}", stacklevel=2)
                continue
            return random_crop(img, self.size, gen, self.max_zoom_out, self.hflip)
        raise DataError("Every training image failed to load; check the data folder.")


class StepSampler(Sampler[int]):
    """Sample indices of steps [start_step, ...): batch `b` of step `s` on rank `r` is deterministic."""

    def __init__(self, batch_size: int, start_step: int = 0, rank: int = 0, world_size: int = 1,
                 num_steps: int | None = None):
        self.batch_size, self.start_step, self.rank, self.world_size = batch_size, start_step, rank, world_size
        self.num_steps = num_steps

    def __iter__(self) -> Iterator[int]:
        step = self.start_step
        while self.num_steps is None or step < self.start_step + self.num_steps:
            base = (step * self.world_size + self.rank) * self.batch_size
            yield from range(base, base + self.batch_size)
            step += 1

    def __len__(self) -> int:
        return (self.num_steps or 2**40) * self.batch_size


def load_eval_images(files: list[Path], size: int) -> torch.Tensor:
    """Centre crops of held-out images, stacked (N, 3, size, size); unreadable files are skipped."""
    crops = []
    for path in files:
        try:
            crops.append(center_crop(load_rgb(path), size))
        except BAD_IMAGE_ERRORS as exc:
            warnings.warn(f"Skipping unreadable image {path}: {exc}", stacklevel=2)
    if not crops:
        raise DataError("No readable evaluation images.")
    return torch.stack(crops)


SAMPLE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                 "motorcycle_right.png", "hubble_deep_field.jpg")


def sample_photos(dest: str | Path) -> Path:
    """Copy the colour photos that ship inside scikit-image's wheel into `dest` as PNGs.

    They install with the project, so the smoke recipe and the tests have real photos offline.
    """
    import skimage

    source = Path(skimage.__file__).parent / "data"
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in SAMPLE_PHOTOS:
        path = dest / f"{Path(name).stem}.png"
        if not path.exists():
            load_rgb(source / name).save(path)
    return dest


# --- where training crops come from (folder, stream, teacher cache) -------------------------------------

BUILTIN_PHOTOS = "builtin:skimage"  # data.path value: scikit-image's sample photos (offline smoke runs)
FORMATS = ("auto", "folder", "tar", "hf", "hf-stream")


@dataclass
class TrainSource:
    """A run's training data as the recipe describes it: images from a folder or a stream, and teacher caches.

    `caches` maps a crop size to a TeacherCache; a phase at a size with a cache reads
    crops and latents from it, any other phase draws crops on the fly.
    """

    kind: str  # folder | tar | hf | hf-stream | cache (caches only, no images)
    files: list[Path] = field(default_factory=list)  # folder: training images after the held-out split
    heldout: list[Path] = field(default_factory=list)  # images for samples and the final evaluation
    n_bad: int = 0  # unreadable files found up front (streams count theirs while reading)
    rows: Any = None  # hf: the map-style datasets.Dataset
    reader: Any = None  # tar / hf-stream: a streaming reader
    caches: dict[int, Any] = field(default_factory=dict)
    image_column: str = "image"
    name: str = ""

    def dataset(self, resolution: int, seed: int, max_zoom_out: float = 2.0, hflip: bool = True):
        """Indexable samples (folder, hf, cache) or None for a stream."""
        if resolution in self.caches:
            return self.caches[resolution]
        if self.kind == "cache":
            raise DataError(f"No teacher cache for {resolution} px crops and no images to crop on the fly; pass "
                            f"data.path too, or a cache built with --resolution {resolution}.")
        if self.kind == "folder":
            return RandomCrops(self.files, resolution, seed=seed, max_zoom_out=max_zoom_out, hflip=hflip)
        if self.kind == "hf":
            from tinyae.streaming import HFRows

            return HFRows(self.rows, self.image_column, resolution, seed, max_zoom_out, hflip, name=self.name)
        return None

    def stream(self, resolution: int, batch_size: int, seed: int, start_step: int = 0, num_steps: int | None = None,
               rank: int = 0, world_size: int = 1, max_zoom_out: float = 2.0, hflip: bool = True):
        from tinyae.streaming import StreamCrops

        return StreamCrops(self.reader, resolution, batch_size, seed, start_step, num_steps, rank, world_size,
                           max_zoom_out, hflip)

    def crops(self, resolution: int, seed: int, start: int, count: int, max_zoom_out: float = 2.0,
              hflip: bool = True) -> Iterator[torch.Tensor]:
        """Crops of sample indices [start, start + count), as a one-process run draws them (cache builds)."""
        data = self.dataset(resolution, seed, max_zoom_out, hflip)
        if data is None:
            return self.stream(resolution, count, seed, max_zoom_out=max_zoom_out, hflip=hflip).take(start, count)
        return (data[i] for i in range(start, start + count))

    def crop_policy(self, resolution: int, seed: int, max_zoom_out: float, hflip: bool, holdout: int) -> dict:
        """What decides which crop sample `i` is: recorded in a cache, compared when training from it."""
        source = self.reader.describe() if self.reader is not None else {"format": self.kind, "path": self.name}
        if self.kind == "folder":
            source |= {"images": len(self.files), "holdout": holdout}
        if self.kind == "hf":
            source |= {"rows": len(self.rows)}
        return {"source": source, "resolution": resolution, "seed": seed, "max_zoom_out": max_zoom_out,
                "hflip": hflip}

    def describe(self) -> str:
        """One line for the run log."""
        caches = "".join(f"; teacher cache {c.path} ({c.samples} samples at {r} px)" for r, c in self.caches.items())
        if self.kind == "folder":
            what = f"{len(self.files)} images in {self.name} ({self.n_bad} unreadable skipped)"
        elif self.kind == "hf":
            what = f"{len(self.rows)} rows of the dataset {self.name}"
        elif self.kind == "cache":
            what = "teacher caches only"
        else:
            what = f"{self.kind} stream {self.name}"
        return f"{what}, {len(self.heldout)} held-out images{caches}"

    def preview_images(self, n: int, size: int) -> torch.Tensor:
        """Centre crops of the first `n` training images (e.g. to estimate a teacher's factors)."""
        if self.kind == "folder":
            return load_eval_images(self.files[:n], size)
        if self.kind == "hf":
            from tinyae.streaming import decode_image

            rows = range(min(n, len(self.rows)))
            return torch.stack([center_crop(decode_image(self.rows[i][self.image_column]), size) for i in rows])
        if self.kind == "cache":
            raise DataError("A run from teacher caches alone has no raw images to look at; pass data.path too.")
        return self.stream(size, 1, 0).preview(n, size)


def detect_format(path: str) -> str:
    from tinyae.streaming import is_saved_dataset

    local = Path(path)
    if is_saved_dataset(local):
        return "hf"
    if local.is_dir():
        suffixes = set()
        for p in local.rglob("*"):
            suffixes.add(p.suffix.lower())
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                return "folder"
        return "tar" if ".tar" in suffixes else "hf-stream" if suffixes & {".parquet", ".arrow"} else "folder"
    if ".tar" in path or "{" in path or "::" in path:
        return "tar"
    if not local.exists() and path.count("/") == 1:
        return "hf-stream"  # a Hub dataset id
    raise DataError(f"Cannot tell what '{path}' is: pass a folder of images, .tar shards, a datasets folder or a "
                    "Hub dataset id, and --data.format folder|tar|hf|hf-stream if needed.")


def make_train_source(recipe, teacher=None, output_dir: str | Path | None = None) -> TrainSource:
    """The recipe's training data: opens and checks caches (against `teacher`), streams and folders."""
    data, seed = recipe.data, recipe.train.seed
    if data.format not in FORMATS:
        raise ConfigError(f"data.format must be one of {', '.join(FORMATS)}, got '{data.format}'.")
    caches = _open_caches(recipe, teacher)
    path = data.path
    if path is None and not caches:
        raise DataError("No training data: pass --data DIR (images, .tar shards or a datasets folder), "
                        f"--data {BUILTIN_PHOTOS} for scikit-image's sample photos, or --data.cache DIR.")
    heldout = list_images(data.eval_path) if data.eval_path else []
    if path is None:
        return TrainSource("cache", heldout=heldout, caches=caches, name=str(data.cache))
    if path == BUILTIN_PHOTOS:
        path = str(sample_photos(Path(output_dir or tempfile.mkdtemp(prefix="tinyae-")) / "data" / "skimage"))
    kind = detect_format(path) if data.format == "auto" else data.format
    source = TrainSource(kind, heldout=heldout, caches=caches, image_column=data.image_column, name=data.path)
    if kind == "folder":
        good, bad = scan_images(path)
        source.files, held = split_holdout(good, 0 if data.eval_path else data.holdout)
        source.heldout, source.n_bad = heldout or held, len(bad)
        if not source.files:
            raise DataError(f"No training images left in '{path}' after holding out {len(held)}; add images.")
    elif kind == "tar":
        from tinyae.streaming import TarShards, expand_shards

        source.reader = TarShards(expand_shards(path), seed, data.shuffle_buffer)
    elif kind == "hf":
        from tinyae.streaming import load_hf_rows

        source.rows = load_hf_rows(path, data.split)
    else:
        from tinyae.streaming import HFStream

        source.reader = HFStream(path, data.split, data.image_column, seed, data.shuffle_buffer)
    if kind != "folder" and data.holdout and not data.eval_path:
        logger.info("A %s source holds no images out: pass data.eval_path DIR for samples and the final evaluation.",
                    kind)
    for resolution, cache in caches.items():
        _check_crop_policy(recipe, source, resolution, cache)
    return source


def _open_caches(recipe, teacher) -> dict[int, Any]:
    data = recipe.data
    wanted = [(p, r, f) for p, r, f in ((data.cache, data.resolution, "data.cache"),
                                         (data.final_cache, data.final_resolution, "data.final_cache")) if p]
    if not wanted:
        return {}
    from tinyae.cache import open_cache

    if teacher is None:
        raise DataError("Opening a teacher cache needs the teacher, to check the cache was made with it.")
    if recipe.teacher.estimate_factors and recipe.teacher.scaling_factor is None:
        raise ConfigError("teacher.estimate_factors cannot be used with a teacher cache: the cache's latents already "
                        "carry the factors it was built with. Drop one of the two.")
    caches = {}
    for path, resolution, field_name in wanted:
        if resolution is None:
            raise ConfigError(f"{field_name} is set but data.final_resolution is not; set both or neither.")
        cache = caches[resolution] = open_cache(path, teacher, resolution)
        if recipe.loss.target == "teacher" and not cache.with_targets:
            logger.warning("Cache %s has no teacher reconstructions: loss.target=teacher will run the teacher's "
                           "decoder every step (build with --with-targets to avoid it).", path)
    phases = {data.resolution} | ({data.final_resolution} if data.final_steps and data.final_resolution else set())
    for resolution in sorted(phases - set(caches)):
        logger.info("No teacher cache for the %d px phase: it runs the teacher on the fly.", resolution)
    return caches


def _check_crop_policy(recipe, source: TrainSource, resolution: int, cache) -> None:
    """A cache made with other crop settings still trains correctly; say so, because the data differ."""
    data = recipe.data
    ours = source.crop_policy(resolution, recipe.train.seed, data.max_zoom_out, data.hflip, data.holdout)
    theirs = cache.index["crop_policy"]
    differ = sorted(k for k in ours if json.dumps(ours[k], sort_keys=True) != json.dumps(theirs.get(k), sort_keys=True))
    if differ:
        logger.warning("Teacher cache %s was cropped with other settings (%s differ): training uses the cache's "
                       "crops; held-out images may overlap them if the source or holdout differ.",
                       cache.path, ", ".join(differ))


def collate_samples(samples: list) -> dict[str, torch.Tensor]:
    """Crops -> {"images"}; cache samples (dicts) -> the same keys, stacked."""
    if isinstance(samples[0], dict):
        return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}
    return {"images": torch.stack(samples)}


def make_train_loader(files: list[Path] | TrainSource, resolution: int, batch_size: int, seed: int,
                      start_step: int = 0, num_steps: int | None = None, rank: int = 0, world_size: int = 1,
                      num_workers: int = 0, max_zoom_out: float = 2.0, hflip: bool = True,
                      pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """Batches for steps [start_step, start_step + num_steps) of this rank.

    Every batch has "images" (B, 3, R, R) in [-1, 1]; from a teacher cache also "latents"
    (and "targets" if the cache has them). `files` is a list of images or a TrainSource.
    """
    source = files if isinstance(files, TrainSource) else TrainSource("folder", files=list(files))
    dataset = source.dataset(resolution, seed, max_zoom_out, hflip)
    if dataset is None:  # a stream batches itself, in step order whatever the number of workers
        stream = source.stream(resolution, batch_size, seed, start_step, num_steps, rank, world_size, max_zoom_out,
                               hflip)
        return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory)
    sampler = StepSampler(batch_size, start_step, rank, world_size, num_steps)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=collate_samples,
        pin_memory=pin_memory, persistent_workers=False,
    )
