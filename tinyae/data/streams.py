"""Streaming training data: webdataset tar shards and Hugging Face datasets, read where they are.

A user with tens of millions of images should not copy them into a folder
first. A stream is read in *parts*: with `W` processes of `n` DataLoader
workers each, there are `W * n` parts (whole shards when there are enough of
them, else every `W * n`-th example) and batch `b` of process `r` comes from
part `r * n + b mod n`. A part is an endless sequence of records (epoch after
epoch, shard order and a buffer shuffle reseeded per epoch) and the crop of
the record at position `p` is a pure function of (seed, part, p), so:

- a resumed run skips the records its part consumed (read, not decoded) and
  then sees exactly the batches an uninterrupted run would, given the same
  number of processes and workers;
- an unreadable record is skipped, warned about and counted; its slot is
  filled by the next readable record, so positions, and with them resume and
  the other slots, do not move.

Map-style datasets saved with `save_to_disk` need no streaming: `HFRows`
addresses them by sample index like an image folder.
"""

from __future__ import annotations

import glob
import itertools
import random
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from tinyae.data.folder import IndexedCrops
from tinyae.data.images import (
    BAD_IMAGE_ERRORS,
    IMAGE_EXTENSIONS,
    CropPolicy,
    as_crop_policy,
    center_crop,
    decode_image,
    open_image,
    random_crop,
)
from tinyae.errors import DataError

TAR_IMAGE_KEYS = tuple(ext.lstrip(".") for ext in sorted(IMAGE_EXTENSIONS))
MAX_CONSECUTIVE_BAD = 1000  # then the stream is broken, not noisy

Record = tuple[str, Any]  # (name for messages, encoded image: bytes, a path, a PIL image or an HF image dict)


def crop_generator(seed: int, part: int, parts: int, position: int) -> torch.Generator:
    """The generator of one stream slot: independent of batch size, resume point and reading order."""
    state = np.random.SeedSequence([seed, part, parts, position]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


# --- readers: records of one part, one epoch ---------------------------------------------------------------


def expand_shards(spec: str) -> list[str]:
    """A folder of .tar files, a glob, a brace pattern (`shards-{000..099}.tar`) or URLs joined with `::`."""
    from webdataset.shardlists import expand_urls

    path = Path(spec)
    if path.is_dir():
        urls = sorted(str(p) for p in path.rglob("*.tar"))
        if not urls:
            raise DataError(f"Folder '{spec}' holds no .tar shards; pass a folder of webdataset .tar files.")
        return urls
    if any(c in spec for c in "*?[") and "://" not in spec:
        urls = sorted(glob.glob(spec))
    else:
        urls = expand_urls(spec)
    local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
    missing = [u for u in local if not Path(u).is_file()]
    if not urls or missing:
        raise DataError(f"No tar shard at '{missing[0] if missing else spec}'; pass a folder of .tar files, "
                        "a glob or a brace pattern such as shards/{000000..000099}.tar.")
    return urls


class TarShards:
    """Records of webdataset-style tar shards (`key.jpg`, `key.json`, ... grouped by key), via `webdataset`."""

    def __init__(self, urls: list[str], seed: int = 0, shuffle_buffer: int = 1000):
        self.urls, self.seed, self.shuffle_buffer = list(urls), seed, shuffle_buffer
        self.errors = 0  # unreadable shards or tar members

    def describe(self) -> dict:
        return {"format": "tar", "shards": len(self.urls), "first": self.urls[0], "shuffle_buffer": self.shuffle_buffer}

    def _skip_rest(self, exc: Exception) -> bool:
        """webdataset error handler: warn, count, and stop reading this shard (False means stop)."""
        self.errors += 1
        warnings.warn(f"Skipping the rest of an unreadable tar shard: {exc!r}", stacklevel=2)
        return False

    def samples(self, urls: list[str]) -> Iterator[dict]:
        """webdataset samples of `urls` in order; each shard is closed as soon as it is read."""
        from webdataset.gopen import gopen
        from webdataset.tariterators import group_by_keys, tar_file_expander

        for url in urls:
            try:
                with gopen(url) as stream:
                    files = tar_file_expander([{"url": url, "stream": stream}], handler=self._skip_rest)
                    yield from group_by_keys(files, handler=self._skip_rest)
            except OSError as exc:  # could not open it
                self._skip_rest(exc)

    def epoch(self, part: int, parts: int, epoch: int) -> Iterator[Record]:
        from webdataset import filters

        by_shard = len(self.urls) >= parts
        urls = self.urls[part::parts] if by_shard else list(self.urls)
        # by shard: each part shuffles its own shards; by example: one global order, so parts stay disjoint
        order = np.random.default_rng([self.seed, epoch] + ([part, parts] if by_shard else [])).permutation(len(urls))
        samples = self.samples([urls[i] for i in order])
        if not by_shard:
            samples = (s for i, s in enumerate(samples) if i % parts == part)
        if self.shuffle_buffer > 1:
            rng = random.Random(int(np.random.SeedSequence([self.seed, part, parts, epoch]).generate_state(1)[0]))
            samples = filters.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(iter(samples))
        for sample in samples:
            name = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
            yield name, next((sample[k] for k in TAR_IMAGE_KEYS if k in sample), None)


class HFStream:
    """Records of a Hugging Face dataset read with `streaming=True` (local files or the Hub)."""

    def __init__(self, path: str, split: str = "train", column: str = "image", seed: int = 0,
                 shuffle_buffer: int = 1000):
        import datasets

        self.path, self.split, self.column, self.seed, self.shuffle_buffer = path, split, column, seed, shuffle_buffer
        try:
            ds = datasets.load_dataset(path, split=split, streaming=True)
        except Exception as exc:  # datasets raises many types for "not found / not reachable"
            raise DataError(f"Could not open '{path}' (split '{split}') as a streaming Hugging Face dataset: {exc}. "
                            "Pass an existing local folder (images, .tar shards, parquet/arrow files or a "
                            "save_to_disk folder) or a reachable Hub dataset id.") from None
        self.dataset = _image_column(ds, column, path)

    def describe(self) -> dict:
        return {"format": "hf-stream", "path": self.path, "split": self.split, "column": self.column,
                "shuffle_buffer": self.shuffle_buffer}

    def epoch(self, part: int, parts: int, epoch: int) -> Iterator[Record]:
        from datasets.distributed import split_dataset_by_node

        ds = self.dataset
        if self.shuffle_buffer > 1:
            ds = ds.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
        ds = split_dataset_by_node(ds, rank=part, world_size=parts)
        ds.set_epoch(epoch)
        # .iter() rather than iter(): inside a DataLoader worker, datasets would split our part again.
        for i, row in enumerate(ds.iter(batch_size=1)):
            yield f"{self.path}[part {part}/{parts}, epoch {epoch}, #{i}]", row[self.column][0]


def _image_column(ds, column: str, path: str):
    """Keep the image column undecoded: a corrupt image must reach our skip policy, not stop the iterator."""
    import datasets

    features = ds.features or {}
    if features and column not in features:
        raise DataError(f"Dataset '{path}' has no column '{column}' (columns: {', '.join(features)}); "
                        "pass --data.image_column NAME.")
    if isinstance(features.get(column), datasets.Image):
        ds = ds.cast_column(column, datasets.Image(decode=False))
    return ds


# --- crops from a stream ---------------------------------------------------------------------------------


class StreamCrops(IterableDataset):
    """Batches {"images": (B, 3, R, R)} of steps [start_step, start_step + num_steps) of one process.

    Use with `DataLoader(batch_size=None)`: batches come out in step order whatever the
    number of workers, because worker `w` produces the steps `start_step + w + k * n`.
    """

    def __init__(self, reader, policy: CropPolicy | int, batch_size: int, seed: int = 0, start_step: int = 0,
                 num_steps: int | None = None, rank: int = 0, world_size: int = 1):
        self.reader, self.policy, self.batch_size, self.seed = reader, as_crop_policy(policy), batch_size, seed
        self.start_step, self.num_steps, self.rank, self.world_size = start_step, num_steps, rank, world_size
        self.bad = 0  # unreadable records met by this process

    def records(self, part: int, parts: int, skip: int = 0) -> Iterator[tuple[int, Record]]:
        """(position, record) of one part from `skip` on, epoch after epoch; skipped records are not decoded."""
        position, epoch = 0, 0
        while True:
            count = 0
            for record in self.reader.epoch(part, parts, epoch):
                count += 1
                if position >= skip:
                    yield position, record
                position += 1
            if count == 0:
                raise DataError(f"Part {part} of {parts} of the stream holds no samples: use fewer processes or "
                                "workers than shards/examples, or check the data.")
            epoch += 1

    def crops(self, part: int, parts: int, skip: int = 0) -> Iterator[torch.Tensor]:
        """Crops of positions skip, skip+1, ... of one part; an unreadable record lends its slot to the next one."""
        pending: list[int] = []
        for position, (name, payload) in self.records(part, parts, skip):
            try:
                img = decode_image(payload)
            except BAD_IMAGE_ERRORS as exc:
                self.bad += 1
                warnings.warn(f"Skipping unreadable sample {name}: {exc}", stacklevel=2)
                pending.append(position)
                if len(pending) >= MAX_CONSECUTIVE_BAD:
                    raise DataError(f"{len(pending)} unreadable samples in a row (last: {name}); the stream "
                                    "looks broken.") from None
                continue
            for slot in pending + [position]:
                gen = crop_generator(self.seed, part, parts, slot)
                yield random_crop(img, self.policy, gen)
            pending = []

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        lane = (self.start_step + worker) % workers  # batches start_step + worker + k*workers all belong to one lane
        part, parts = self.rank * workers + lane, self.world_size * workers
        step = self.start_step + worker
        end = None if self.num_steps is None else self.start_step + self.num_steps
        crops = self.crops(part, parts, skip=(step - lane) // workers * self.batch_size)
        while end is None or step < end:
            yield {"images": torch.stack([next(crops) for _ in range(self.batch_size)])}
            step += workers

    def take(self, start: int, count: int) -> Iterator[torch.Tensor]:
        """Crops of positions [start, start + count) of the single-process, single-worker order (cache builds)."""
        return itertools.islice(self.crops(0, 1, skip=start), count)

    def preview(self, n: int, size: int) -> torch.Tensor:
        """Centre crops of the first `n` readable records of one pass, for estimating factors."""
        out = []
        for _, payload in self.reader.epoch(0, 1, 0):
            try:
                out.append(center_crop(decode_image(payload), size))
            except BAD_IMAGE_ERRORS:
                continue
            if len(out) == n:
                break
        if not out:
            raise DataError("The stream holds no readable image.")
        return torch.stack(out)


class HFRows(IndexedCrops):
    """A map-style Hugging Face dataset (`save_to_disk` folder) as random crops by sample index, like a folder."""

    def __init__(self, dataset, column: str, policy: CropPolicy | int, seed: int = 0, name: str = "dataset"):
        if len(dataset) == 0:
            raise DataError(f"Dataset '{name}' is empty.")
        super().__init__(len(dataset), policy, seed)
        self.dataset, self.column, self.dataset_name = _image_column(dataset, column, name), column, name

    def image(self, k: int) -> Image.Image:
        return open_image(self.dataset[k][self.column])  # decoded by the crop, a JPEG only at the scale it needs

    def name(self, k: int) -> str:
        return f"row {k} of {self.dataset_name}"


def load_hf_rows(path: str, split: str = "train"):
    """A `save_to_disk` folder (Dataset or DatasetDict) -> the map-style split."""
    import datasets

    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"Dataset '{path}' has no split '{split}' (splits: {', '.join(ds)}); pass --data.split.")
        ds = ds[split]
    return ds


def is_saved_dataset(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists())
