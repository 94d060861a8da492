"""Images for distillation: a recursive folder, random crops addressed by sample index.

Sample `i` is a pure function of (seed, i): which image, where the crop is and
whether it is flipped. Training at step `s` asks for a fixed range of indices,
so a resumed run sees exactly the batches an uninterrupted one would, and
processes of a multi-process run read disjoint indices without coordination.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler

from tinyae.errors import DataError

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

def make_train_loader(files: list[Path], resolution: int, batch_size: int, seed: int, start_step: int = 0,
                      num_steps: int | None = None, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                      max_zoom_out: float = 2.0, hflip: bool = True) -> torch.utils.data.DataLoader:
    """Batches {"images": (B, 3, R, R)} for steps [start_step, start_step + num_steps) of this rank."""
    dataset = RandomCrops(files, resolution, seed=seed, max_zoom_out=max_zoom_out, hflip=hflip)
    sampler = StepSampler(batch_size, start_step, rank, world_size, num_steps)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        collate_fn=lambda crops: {"images": torch.stack(crops)},
        persistent_workers=False,
    )
