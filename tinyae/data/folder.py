"""Random crops addressed by sample index, from an image folder or any list of images.

Sample `i` is a pure function of (seed, i): which image, where the crop is and whether
it is flipped. Training at step `s` asks for a fixed range of indices, so a resumed run
sees exactly the batches an uninterrupted one would, and processes of a multi-process
run read disjoint indices without coordination.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from tinyae.data.images import BAD_IMAGE_ERRORS, CropPolicy, as_crop_policy, random_crop
from tinyae.errors import DataError


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


class IndexedCrops(Dataset):
    """Sample index -> crop in [-1, 1] (as `policy` draws it) of one of `count` images; any index >= 0 works.

    An unreadable image is skipped (warned about once, remembered) and the next one used,
    so one bad file never stops a run. Subclasses say how image `k` is read and named.
    """

    def __init__(self, count: int, policy: CropPolicy | int, seed: int = 0):
        self.count, self.policy, self.seed = count, as_crop_policy(policy), seed
        self.bad: set[int] = set()

    def image(self, k: int) -> Image.Image:
        """Image `k`, decoded or only opened (random_crop reads what it needs)."""
        raise NotImplementedError

    def name(self, k: int) -> str:
        """How warnings name image `k`."""
        return f"image #{k}"

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, index: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(index))
        choice = int(torch.randint(0, self.count, (), generator=gen))
        for attempt in range(self.count):
            k = (choice + attempt) % self.count
            if k in self.bad:
                continue
            state = gen.get_state()
            try:  # decoding happens inside the crop (only as much of a JPEG as the crop needs)
                return random_crop(self.image(k), self.policy, gen)
            except BAD_IMAGE_ERRORS as exc:
                gen.set_state(state)  # the next image draws its crop as if this one had not been tried
                self.bad.add(k)
                warnings.warn(f"Skipping unreadable {self.name(k)}: {exc}", stacklevel=2)
        raise DataError("Every training image failed to load; check the data.")


class RandomCrops(IndexedCrops):
    """Random crops of image files."""

    def __init__(self, files: list[Path], policy: CropPolicy | int, seed: int = 0):
        if not files:
            raise DataError("No training images left after the held-out split; add images or lower data.holdout.")
        super().__init__(len(files), policy, seed)
        self.files = list(files)

    def image(self, k: int) -> Image.Image:
        return Image.open(self.files[k])  # read by the crop, which may need only a reduced-scale decode

    def name(self, k: int) -> str:
        return f"image {self.files[k]}"


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
