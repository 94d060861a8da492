"""Image helpers that everything else builds on: reading files, tensors in [-1, 1], crops, sample photos.

Images are float tensors (3, H, W) in [-1, 1] (diffusers' convention) made from 8-bit
pixels (16-bit and float files are scaled to 8 bits on reading, `to_rgb`); uint8 <-> float
goes through one pair of functions, so a crop stored in the teacher cache reads back
bit-identical to one drawn on the fly.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from kornia import enhance
from PIL import Image, UnidentifiedImageError

from tinyae.errors import DataError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"}  # a GIF's first frame
BAD_IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)
BUILTIN_PHOTOS = "builtin:skimage"  # data.path value: scikit-image's sample photos (offline smoke runs)
SAMPLE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                 "motorcycle_right.png", "hubble_deep_field.jpg")


def list_images(root: str | Path) -> list[Path]:
    """All image files under `root`, sorted; folder symlinks are followed, each real folder searched once.

    A link back to a folder already searched (a loop, or a second link to the same folder)
    is not followed, with a warning; a clear error if there are no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Image folder '{root}' does not exist; pass --data DIR with a folder of jpg/png/webp/tif/"
                        "bmp/gif images.")
    files, searched = [], {}

    def unreadable(exc: OSError) -> None:
        if Path(exc.filename) == root:
            raise DataError(f"Cannot read image folder '{root}': {exc.strerror.lower()}; make it readable or pass "
                            "another folder.")
        warnings.warn(f"Skipping folder '{exc.filename}': {exc.strerror.lower()}.", stacklevel=3)

    for folder, subfolders, names in os.walk(root, followlinks=True, onerror=unreadable):
        real = os.stat(folder)
        key = (real.st_dev, real.st_ino)
        if key in searched:
            warnings.warn(f"Not following '{folder}': it leads to '{searched[key]}', already searched.", stacklevel=2)
            subfolders[:] = []
            continue
        searched[key] = folder
        subfolders.sort()
        files += [Path(folder) / name for name in names if Path(name).suffix.lower() in IMAGE_EXTENSIONS
                  and os.path.isfile(os.path.join(folder, name))]
    if not files:
        raise DataError(f"Image folder '{root}' holds no jpg, jpeg, png, webp, tif, tiff, bmp or gif files (searched "
                        "recursively).")
    return sorted(files)


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any mode PIL reads; 16-bit and float pixels are scaled, not clipped.

    16-bit integers (I;16*, and I, which PIL uses for 16-bit data) are divided by 257 and
    float pixels (F) are taken to be in [0, 1]; values outside those ranges have no known
    scale, so they raise ValueError (one of BAD_IMAGE_ERRORS: the image is skipped and counted).
    """
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        pixels = np.asarray(img)
        low, high = int(pixels.min()), int(pixels.max())
        if low < 0 or high > 65535:
            raise ValueError(f"{img.mode} pixels in [{low}, {high}] are not 16-bit values, so their scale is unknown")
        return Image.fromarray(np.round(pixels.astype(np.float32) / 257).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        pixels = np.asarray(img, dtype=np.float32)
        low, high = float(np.nanmin(pixels)), float(np.nanmax(pixels))
        if not np.isfinite(pixels).all() or low < 0 or high > 1:
            raise ValueError(f"float pixels in [{low:g}, {high:g}] (or not finite) are not in [0, 1], so their scale "
                             "is unknown")
        return Image.fromarray(np.round(pixels * 255).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return to_rgb(img)


def open_image(payload: Any) -> Image.Image:
    """Bytes, a path, an HF image dict or a PIL image, opened but (a file's) not yet decoded: `decoded` or
    `random_crop` reads it, a JPEG only at the scale they need."""
    if isinstance(payload, dict):  # datasets.Image(decode=False)
        payload = payload.get("bytes") or payload.get("path")
    if isinstance(payload, Image.Image):
        return payload
    if payload is None:
        raise ValueError("the sample holds no image")
    return Image.open(io.BytesIO(payload) if isinstance(payload, (bytes, bytearray)) else payload)


def decode_image(payload: Any) -> Image.Image:
    """Bytes, a path, an HF image dict or a PIL image -> RGB; raises one of BAD_IMAGE_ERRORS if unreadable."""
    if isinstance(payload, dict):  # datasets.Image(decode=False)
        payload = payload.get("bytes") or payload.get("path")
    if isinstance(payload, Image.Image):
        return to_rgb(payload)
    if payload is None:
        raise ValueError("the sample holds no image")
    return load_rgb(io.BytesIO(payload) if isinstance(payload, (bytes, bytearray)) else payload)


def _check_readable(path: Path) -> tuple[int, int]:
    """Raise one of BAD_IMAGE_ERRORS unless the whole file decodes to pixels `to_rgb` can scale.

    Cheap where the format allows: PNG's verify checks every chunk's CRC without inflating,
    and a JPEG that ends with its end-of-image marker is whole (one that does not is decoded
    at 1/8 scale, which reads every byte: truncated ones fail, trailing junk does not).
    """
    with Image.open(path) as img:
        size = img.size  # (width, height), before draft() shrinks it
        if img.format == "PNG":
            img.verify()
            return size
        if img.format == "JPEG":
            with open(path, "rb") as f:
                f.seek(-2, os.SEEK_END)
                if f.read(2) == b"\xff\xd9":
                    return size
            img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
        img.load()
        to_rgb(img)
        return size


def scan_images(root: str | Path, crop: int | None = None, part: int = 0, parts: int = 1,
                share: Callable[[tuple], list[tuple]] | None = None) -> tuple[list[Path], list[Path]]:
    """Split a folder into readable and unreadable images (truncated, or of unknown pixel range), warning once each;
    with `crop`, warn once about the images whose short side is below it (they are upscaled to it).

    Several processes split the work: each checks every `parts`-th image from `part` on and
    `share` (an all-gather) hands every process all parts' findings, so a launch on N GPUs reads
    each file once instead of N times.
    """
    files = list_images(root)
    good, bad, small = [], [], []
    for path in files[part::parts]:
        try:
            width, height = _check_readable(path)
            good.append(path)
        except BAD_IMAGE_ERRORS as exc:
            warnings.warn(f"Skipping unreadable image {path}: {exc}", stacklevel=2)
            bad.append(path)
            continue
        if crop is not None and min(width, height) < crop:
            small.append((path, f"{path.name} {width}x{height}"))
    if parts > 1 and share is not None:
        found = share((good, bad, small))
        good, bad = sorted(p for g, _, _ in found for p in g), sorted(p for _, b, _ in found for p in b)
        small = sorted(s for _, _, part_small in found for s in part_small)
    if not good:
        raise DataError(f"None of the {len(bad)} image files under '{root}' could be read.")
    if small:
        warnings.warn(f"{len(small)} of {len(good)} images under '{root}' are smaller than the {crop} px crop and are "
                      f"upscaled to it ({', '.join(s for _, s in small[:3])}{', ...' if len(small) > 3 else ''}); add "
                      "larger images or choose a smaller resolution.", stacklevel=2)
    return good, bad


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> uint8; lossless for crops, which come from uint8 pixels."""
    return images.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [-1, 1]."""
    return images.float().div(127.5).sub(1)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float tensor (3, H, W) in [-1, 1]."""
    return from_uint8(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1))


def to_pil(x: torch.Tensor) -> Image.Image:
    """Tensor (3, H, W) in [-1, 1] -> PIL RGB."""
    return Image.fromarray(to_uint8(x.detach().float()).permute(1, 2, 0).cpu().numpy())


@dataclass(frozen=True)
class CropPolicy:
    """How a training crop is drawn; every random choice comes from the sample's own generator.

    `scale` "zoom": the image is shrunk so its short side is between `size` and
    `size * max_zoom_out`, then cropped, so crops show half to all of it; "any": the crop's side
    is drawn between `size` pixels (native detail) and the image's full short side, then resized
    to `size`, as madebyollin/seraena draws them. Crops may be flipped and, for a `color_aug`
    share of samples, jittered in saturation, hue, brightness and contrast (TAESD's author:
    colour augmentation on 5-10% of samples "helped saturated colours").
    """

    size: int
    max_zoom_out: float = 2.0
    hflip: bool = True
    color_aug: float = 0.0
    scale: str = "zoom"  # zoom | any

    def to_dict(self) -> dict:
        return asdict(self)


def as_crop_policy(policy: CropPolicy | int) -> CropPolicy:
    """A crop size alone means the default zoom and flips."""
    return CropPolicy(policy) if isinstance(policy, int) else policy


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=gen).item()


def color_jitter(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random saturation / hue / brightness / contrast change of a (3, H, W) image in [-1, 1], kept 8-bit."""
    y = x.add(1).div(2)
    y = enhance.adjust_saturation(y, _uniform(gen, 0.5, 1.8))
    y = enhance.adjust_hue(y, _uniform(gen, -0.25, 0.25))
    y = enhance.adjust_brightness(y, _uniform(gen, -0.1, 0.1))
    y = enhance.adjust_contrast(y, _uniform(gen, 0.75, 1.3)).clamp(0, 1)
    return from_uint8(to_uint8(y.mul(2).sub(1)))  # 8-bit like every other crop, so the cache stores it exactly


def decoded(img: Image.Image, at_least: tuple[int, int]) -> Image.Image:
    """RGB pixels of `img`; a JPEG not yet read is decoded at the smallest of its DCT scales (1, 1/2, 1/4, 1/8)
    still at least `at_least` (width, height) pixels, which costs up to 64x less than decoding it whole."""
    img.draft(img.mode, at_least)  # a no-op for other formats and for pixels already read
    img.load()
    return img if img.mode == "RGB" else to_rgb(img)


def random_crop(img: Image.Image, policy: CropPolicy, gen: torch.Generator) -> torch.Tensor:
    """A `policy.size` crop of `img` in [-1, 1] (see CropPolicy), never upscaling past need.

    `img` may be an image file opened but not read (`Image.open`): where the crop is is drawn
    from its size alone, then a JPEG is decoded at the smallest scale that still holds the
    crop at full detail (a 96 px crop of a 12-megapixel photo reads it at 1/8 scale), so the
    crops are the same ones, resampled from fewer pixels.
    """
    size = policy.size
    w, h = img.size
    short = min(w, h)
    if policy.scale == "any" and short > size:
        side = round(size + (short - size) * torch.rand((), generator=gen).item())
        left = int(torch.randint(0, w - side + 1, (), generator=gen))
        top = int(torch.randint(0, h - side + 1, (), generator=gen))
        img = decoded(img, (math.ceil(w * size / side), math.ceil(h * size / side)))
        if img.size == (w, h):
            x = to_tensor(img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC))
        else:  # decoded at a reduced scale: the same square, in its coordinates
            sx, sy = img.width / w, img.height / h
            box = (left * sx, top * sy, (left + side) * sx, (top + side) * sy)
            x = to_tensor(img.resize((size, size), Image.BICUBIC, box=box))
    else:
        hi = max(size, min(short, size * policy.max_zoom_out))
        target = size + (hi - size) * torch.rand((), generator=gen).item()
        scale = target / short
        if abs(scale - 1) > 1e-3:
            shape = (max(size, math.ceil(w * scale)), max(size, math.ceil(h * scale)))
            img = decoded(img, shape).resize(shape, Image.BICUBIC)
        else:
            img = decoded(img, (w, h))
        w, h = img.size
        left = int(torch.randint(0, w - size + 1, (), generator=gen))
        top = int(torch.randint(0, h - size + 1, (), generator=gen))
        x = to_tensor(img.crop((left, top, left + size, top + size)))
    if policy.hflip and torch.rand((), generator=gen).item() < 0.5:
        x = x.flip(-1)
    if policy.color_aug > 0 and torch.rand((), generator=gen).item() < policy.color_aug:
        x = color_jitter(x, gen)
    return x


def center_crop(img: Image.Image, size: int) -> torch.Tensor:
    """Resize the short side to `size` and take the centre square: the evaluation view."""
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return to_tensor(img.crop((left, top, left + size, top + size)))


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
