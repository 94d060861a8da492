"""Video clips for video students: (3, F, H, W) tensors in [-1, 1], from video files or synthesised from photos.

- `VideoFolder`: video files (mp4, mkv, webm, mov, avi) under a folder, decoded with PyAV
  (`pip install 'tinyae[video]'`); each item is a random temporal crop of F frames taken every
  `stride` frames (stride drawn per clip from a range, so motion speeds vary), then one random
  spatial crop shared by all its frames.
- `PhotoClips`: clips synthesised from still photos by a camera that pans and zooms across
  them (a crop window moving linearly from a random start to a random end), so offline runs
  and tests need no video download. Real motion parallax and occlusion are missing: these
  clips teach temporal consistency, not all of video.

Frame counts of 1 + 4k suit the video VAEs (1 + k latents). Randomness comes from a generator
seeded per item, so a clip is the same whoever draws it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from tinyae.data.images import from_uint8, list_images, load_rgb, to_tensor
from tinyae.errors import DataError

VIDEO_EXTENSIONS = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v"}


def _av():
    try:
        import av
    except ImportError:
        raise DataError("Reading video files needs PyAV: pip install 'tinyae[video]' (or pip install av).") from None
    return av


def list_videos(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Video folder '{root}' does not exist or is not a folder.")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    if not files:
        raise DataError(f"No video files ({', '.join(sorted(VIDEO_EXTENSIONS))}) under '{root}'.")
    return files


def read_frames(path: str | Path, start: int, count: int, stride: int = 1) -> torch.Tensor:
    """Frames start, start + stride, ... (count of them) of a video file as uint8 (count, 3, H, W)."""
    av = _av()
    wanted = {start + i * stride for i in range(count)}
    frames = []
    try:
        with av.open(str(path)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index in wanted:
                    frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1))
                if index >= max(wanted):
                    break
    except (av.error.FFmpegError, OSError) as exc:
        raise DataError(f"Could not decode video '{path}': {exc}") from None
    if len(frames) < count:
        raise DataError(f"'{path}' has too few frames for a clip of {count} every {stride} from frame {start}.")
    return torch.stack(frames)


def frame_count(path: str | Path) -> int:
    """Frames in the first video stream (from the container when it says, else by decoding); its first frame is
    decoded too, so a file whose header reads but whose data does not is found here, not mid-run."""
    av = _av()
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = container.decode(video=0)
            next(frames)  # StopIteration: no decodable frame
            return stream.frames or 1 + sum(1 for _ in frames)
    except (av.error.FFmpegError, OSError, IndexError, StopIteration, ValueError) as exc:
        raise DataError(f"Could not read video '{path}': {exc or 'no decodable frame'}") from None


def _names(paths: list[Path], limit: int = 3) -> str:
    return ", ".join(p.name for p in paths[:limit]) + (", ..." if len(paths) > limit else "")


def scan_videos(files: list[Path], frames: int) -> tuple[list[Path], list[int], list[Path]]:
    """(usable videos, their frame counts, skipped ones): a video that cannot be read, or is shorter than a clip,
    is skipped with a warning (as unreadable images are), so one bad file never stops a run."""
    good, lengths, unreadable, short = [], [], [], []
    for path in files:
        try:
            length = frame_count(path)
        except DataError as exc:
            warnings.warn(f"Skipping unreadable video {path}: {exc}", stacklevel=2)
            unreadable.append(path)
            continue
        if length < frames:
            short.append((path, length))
            continue
        good.append(path)
        lengths.append(length)
    if short:
        listed = ", ".join(f"{p.name} ({n} frames)" for p, n in short[:3]) + (", ..." if len(short) > 3 else "")
        warnings.warn(f"Skipping {len(short)} video{'s' if len(short) > 1 else ''} shorter than the {frames}-frame "
                      f"clips: {listed}.", stacklevel=2)
    if not good:
        raise DataError(f"None of the {len(files)} videos ({_names(files)}) gives a clip of {frames} frames: "
                        f"{len(unreadable)} cannot be read and {len(short)} are shorter; add longer videos or lower "
                        "the frame count (data.frames, --frames).")
    return good, lengths, unreadable + [p for p, _ in short]


@dataclass(frozen=True)
class ClipPolicy:
    frames: int = 9  # 1 + 4k: 1 + k latents
    size: int = 64  # square crop side, px
    min_stride: int = 1
    max_stride: int = 4

    def __post_init__(self):
        if self.frames < 1 or self.size < 8 or not 1 <= self.min_stride <= self.max_stride:
            raise DataError(f"Bad clip policy {self}: frames >= 1, size >= 8 and 1 <= min_stride <= max_stride.")


def _randint(gen: torch.Generator, low: int, high: int) -> int:
    """Uniform in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=gen))


class VideoFolder(Dataset):
    """Random clips (3, F, size, size) in [-1, 1] from the video files under `root` (see the module docstring)."""

    def __init__(self, root: str | Path | list[Path], policy: ClipPolicy = ClipPolicy(), seed: int = 0):
        files = list(root) if isinstance(root, list) else list_videos(root)
        if not files:
            raise DataError("No training videos left after the held-out split; add videos or lower data.holdout.")
        self.files, self.lengths, self.skipped = scan_videos(files, policy.frames)  # stride 1 must fit
        self.policy, self.seed = policy, seed
        self.bad: set[int] = set()  # videos whose frames failed to decode mid-run (their header read fine)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        first = int(index) % len(self.files)  # training asks for any index: each still draws its own clip
        p = self.policy
        for attempt in range(len(self.files)):
            index = (first + attempt) % len(self.files)
            if index in self.bad:
                continue
            length = self.lengths[index]
            longest = max(1, (length - 1) // max(1, p.frames - 1)) if p.frames > 1 else p.max_stride
            stride = _randint(gen, min(p.min_stride, longest), min(p.max_stride, longest))
            start = _randint(gen, 0, length - 1 - (p.frames - 1) * stride)
            try:
                frames = read_frames(self.files[index], start, p.frames, stride)
            except DataError as exc:  # its header read fine, its frames do not: the next video takes its turn
                self.bad.add(index)
                warnings.warn(f"Skipping unreadable video {self.files[index]}: {exc}", stacklevel=2)
                continue
            _, _, h, w = frames.shape
            if min(h, w) < p.size:
                raise DataError(f"'{self.files[index]}' is {w}x{h}, smaller than the {p.size} px crop.")
            top, left = _randint(gen, 0, h - p.size), _randint(gen, 0, w - p.size)
            return from_uint8(frames[:, :, top:top + p.size, left:left + p.size]).transpose(0, 1)
        raise DataError("Every video failed to decode; check the data.")


def pan_zoom(image: torch.Tensor, frames: int, size: int, gen: torch.Generator, max_zoom: float = 1.5
             ) -> torch.Tensor:
    """(3, H, W) in [-1, 1] -> (3, frames, size, size): a square window gliding and zooming linearly across it."""
    _, h, w = image.shape
    side = min(h, w)

    def window() -> tuple[float, float, float]:
        crop = side / (1 + (max_zoom - 1) * float(torch.rand(1, generator=gen)))  # px of the source
        cy = crop / 2 + float(torch.rand(1, generator=gen)) * (h - crop)
        cx = crop / 2 + float(torch.rand(1, generator=gen)) * (w - crop)
        return cy, cx, crop

    (y0, x0, c0), (y1, x1, c1) = window(), window()
    t = torch.linspace(0, 1, frames).view(-1, 1, 1) if frames > 1 else torch.zeros(1, 1, 1)
    cy, cx, crop = y0 + (y1 - y0) * t, x0 + (x1 - x0) * t, c0 + (c1 - c0) * t
    # sampling grid in the image's normalised coordinates (align_corners=False: pixel centres at (i + 0.5) / n)
    steps = (torch.arange(size) + 0.5) / size - 0.5
    ys = (cy + crop * steps.view(1, -1, 1)) / h * 2 - 1
    xs = (cx + crop * steps.view(1, 1, -1)) / w * 2 - 1
    grid = torch.stack(torch.broadcast_tensors(xs, ys), -1)  # (frames, size, size, 2), x first
    # antialias a strong downscale first, as a camera's optics and sensor would
    factor = max(1, math.floor(float(crop.min()) / size))
    source = F.avg_pool2d(image[None], factor) if factor > 1 else image[None]
    clip = F.grid_sample(source.expand(frames, -1, -1, -1), grid, mode="bilinear", padding_mode="border",
                         align_corners=False)
    return clip.clamp(-1, 1).transpose(0, 1)


class PhotoClips(Dataset):
    """Pan-and-zoom clips (3, F, size, size) in [-1, 1] synthesised from the photos under `root`."""

    def __init__(self, root: str | Path | list[Path], policy: ClipPolicy = ClipPolicy(), seed: int = 0,
                 clips_per_photo: int = 16):
        self.files = list(root) if isinstance(root, list) else list_images(root)
        if not self.files:
            raise DataError("No photos to make clips from; add images or lower data.holdout.")
        self.policy, self.seed, self.clips_per_photo = policy, seed, clips_per_photo

    def __len__(self) -> int:
        return len(self.files) * self.clips_per_photo

    def __getitem__(self, index: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        path = self.files[(int(index) // self.clips_per_photo) % len(self.files)]  # any index >= 0 works
        image = to_tensor(load_rgb(path))
        if min(image.shape[1:]) < self.policy.size:
            raise DataError(f"'{path}' is smaller than the {self.policy.size} px clips.")
        return pan_zoom(image, self.policy.frames, self.policy.size, gen)
