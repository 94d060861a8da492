"""Real photos for offline training, taken from Debian packages and scikit-image.

A machine without the Hub can still train on real photographs: Debian's `opencv-doc`
(example images), `mate-backgrounds` (nature photos) and `plasma-workspace-wallpapers`
(photos and illustrations, up to 5120 px) are downloaded with `apt-get download` and
unpacked with `dpkg-deb -x` (nothing is installed), the colour photos picked, the short
side bounded and saved as JPEG. With scikit-image's sample photos that is about 80
images. Kodak-24, the standard evaluation set, is deliberately not among them.
Licences: opencv-doc Apache-2.0 AND BSD-3-Clause (package), mate-backgrounds GPL-2+,
plasma-workspace-wallpapers LGPL-3 or CC-BY-SA-4.0 per wallpaper (its metadata.json);
scikit-image's photos CC0 / public domain.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from tinyae.data.images import BAD_IMAGE_ERRORS, IMAGE_EXTENSIONS, sample_photos
from tinyae.errors import DataError

# package -> folder inside it holding the photos
DEBIAN_PHOTOS = {
    "opencv-doc": "usr/share/doc/opencv-doc/examples/data",
    "mate-backgrounds": "usr/share/backgrounds/mate/nature",
    "plasma-workspace-wallpapers": "usr/share/wallpapers",
}
# Synthetic or test-pattern images in those folders, not photos.
NOT_PHOTOS = {"opencv-logo", "detect_blob", "pic2", "pic4", "pic5", "graf1", "graf3", "board", "ela_modified"}
MIN_SHORT_SIDE = 256
MIN_COLOURFULNESS = 8.0  # mean |channel - grey| in 8-bit units: below it, an image is (nearly) grey


def _is_colour_photo(img: Image.Image) -> bool:
    rgb = np.asarray(img.convert("RGB").resize((64, 64)), dtype=np.float32)
    return min(img.size) >= MIN_SHORT_SIDE and np.abs(rgb - rgb.mean(2, keepdims=True)).mean() >= MIN_COLOURFULNESS


def _candidates(root: Path, package: str) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.stem not in NOT_PHOTOS)
    if package == "plasma-workspace-wallpapers":  # one picture per wallpaper (its largest), no dark variants
        by_wallpaper: dict[str, Path] = {}
        for p in files:
            if p.parent.name == "images":
                name = p.parts[len(root.parts)]
                if name not in by_wallpaper or p.stat().st_size > by_wallpaper[name].stat().st_size:
                    by_wallpaper[name] = p
        files = sorted(by_wallpaper.values())
    return files


def save_bounded(img: Image.Image, path: Path, max_short_side: int) -> None:
    img = img.convert("RGB")
    scale = max_short_side / min(img.size)
    if scale < 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    img.save(path, quality=95)


def fetch_debian_photos(dest: str | Path, max_short_side: int = 768) -> list[Path]:
    """Download the packages, keep their colour photos (deduplicated) as JPEGs in `dest`; returns the files."""
    dest = Path(dest)
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise DataError("Fetching the Debian photo packages needs apt-get and dpkg-deb (a Debian or Ubuntu "
                        "machine); elsewhere pass --data with any folder of photos.")
    dest.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    written = []
    with tempfile.TemporaryDirectory(prefix="tinyae-photos-") as tmp:
        for package, folder in DEBIAN_PHOTOS.items():
            done = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
            debs = list(Path(tmp).glob(f"{package}_*.deb"))
            if done.returncode != 0 or not debs:
                raise DataError(f"`apt-get download {package}` failed ({done.stderr.strip()[-200:]}); run "
                                "`apt-get update` first or pass --data with a folder of photos.")
            unpacked = Path(tmp) / package
            subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], check=True)
            for path in _candidates(unpacked / folder, package):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                if digest in seen:
                    continue
                seen.add(digest)
                try:
                    with Image.open(path) as img:
                        img.load()
                        if not _is_colour_photo(img):
                            continue
                        stem = path.parent.parent.parent.name if package == "plasma-workspace-wallpapers" else path.stem
                        target = dest / f"{package.split('-')[0]}_{stem}.jpg"
                        save_bounded(img, target, max_short_side)
                        written.append(target)
                except BAD_IMAGE_ERRORS:
                    continue
    return written


def training_photos(dest: str | Path, max_short_side: int = 768) -> Path:
    """The Debian packages' photos plus scikit-image's, in one folder (fetched once; reused when present)."""
    dest = Path(dest)
    marker = dest / ".complete"
    if not marker.exists():
        fetch_debian_photos(dest, max_short_side)
        with tempfile.TemporaryDirectory() as tmp:
            for path in sorted(sample_photos(tmp).iterdir()):
                save_bounded(Image.open(path), dest / f"skimage_{path.stem}.jpg", max_short_side)
        marker.write_text("photos fetched by tinyae.data.photos\n")
    return dest
