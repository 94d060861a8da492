"""Where a run's training crops come from: the one place that turns a recipe into a training source.

A source is an image folder, a stream (webdataset tars, Hugging Face datasets) or
teacher caches, alone or together: a phase whose crop size has a cache reads crops
and latents from it, any other phase draws crops on the fly. `make_train_loader`
gives the batches of steps [start, start + n) of one process, the same whatever the
number of workers, so resumed and multi-process runs see the batches a single
uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from tqdm.auto import tqdm

from tinyae.config import DataConfig, Recipe
from tinyae.data.cache import build_cache, cache_header, finish_cache, num_shards, open_cache, start_cache
from tinyae.data.clips import VIDEO_EXTENSIONS, ClipPolicy, PhotoClips, VideoFolder, list_videos, scan_videos
from tinyae.data.folder import RandomCrops, StepSampler, split_holdout
from tinyae.data.images import (
    BUILTIN_PHOTOS,
    IMAGE_EXTENSIONS,
    CropPolicy,
    as_crop_policy,
    center_crop,
    decode_image,
    list_images,
    load_eval_images,
    sample_photos,
    scan_images,
)
from tinyae.data.streams import HFRows, HFStream, StreamCrops, TarShards, expand_shards, is_saved_dataset, load_hf_rows
from tinyae.errors import ConfigError, DataError
from tinyae.models.teacher import load_teacher
from tinyae.models.video_teacher import check_clip_frames, is_video_teacher, load_video_teacher_for

logger = logging.getLogger(__name__)



@dataclass
class TrainSource:
    """A run's training data as the recipe describes it: images from a folder or a stream, and teacher caches.

    `caches` maps a crop size to a TeacherCache; a phase at a size with a cache reads
    crops and latents from it, any other phase draws crops on the fly.
    """

    kind: str  # folder | tar | hf | hf-stream | cache (caches only, no images) | videos (video files)
    files: list[Path] = field(default_factory=list)  # folder: training images after the held-out split
    heldout: list[Path] = field(default_factory=list)  # images for samples and the final evaluation
    n_bad: int = 0  # unreadable files found up front (streams count theirs while reading)
    rows: Any = None  # hf: the map-style datasets.Dataset
    reader: Any = None  # tar / hf-stream: a streaming reader
    caches: dict[int, Any] = field(default_factory=dict)
    image_column: str = "image"
    name: str = ""
    frames: int = 0  # > 0: samples are clips of this many frames (a video teacher's), from videos or photos
    max_stride: int = 1  # clips from video files: frames taken every 1 to max_stride frames

    def clip_policy(self, size: int) -> ClipPolicy:
        return ClipPolicy(self.frames, size, 1, self.max_stride)

    def dataset(self, policy: CropPolicy, seed: int):
        """Indexable samples (folder, hf, cache, clips) or None for a stream."""
        if policy.size in self.caches:
            return self.caches[policy.size]
        if self.kind == "videos":
            return VideoFolder(self.files, self.clip_policy(policy.size), seed)
        if self.kind == "folder" and self.frames:
            return PhotoClips(self.files, self.clip_policy(policy.size), seed)
        if self.kind == "cache":
            raise DataError(f"No teacher cache for {policy.size} px crops and no images to crop on the fly; pass "
                            f"data.path too, or a cache built with --resolution {policy.size}.")
        if self.kind == "folder":
            return RandomCrops(self.files, policy, seed=seed)
        if self.kind == "hf":
            return HFRows(self.rows, self.image_column, policy, seed, name=self.name)
        return None

    def stream(self, policy: CropPolicy, batch_size: int, seed: int, start_step: int = 0,
               num_steps: int | None = None, rank: int = 0, world_size: int = 1) -> StreamCrops:
        return StreamCrops(self.reader, policy, batch_size, seed, start_step, num_steps, rank, world_size)

    def crops(self, policy: CropPolicy, seed: int, start: int, count: int) -> Iterator[torch.Tensor]:
        """Crops of sample indices [start, start + count), as a one-process run draws them (cache builds)."""
        data = self.dataset(policy, seed)
        if data is None:
            return self.stream(policy, count, seed).take(start, count)
        return (data[i] for i in range(start, start + count))

    def fingerprint(self, policy: CropPolicy, seed: int, holdout: int) -> dict:
        """What decides which crop sample `i` is: recorded in a cache, compared when training from it."""
        source = self.reader.describe() if self.reader is not None else {"format": self.kind, "path": self.name}
        if self.kind in ("folder", "videos"):
            source |= {"images" if self.kind == "folder" else "videos": len(self.files), "holdout": holdout}
        if self.frames:
            source |= {"frames": self.frames, "max_stride": self.max_stride}
        if self.kind == "hf":
            source |= {"rows": len(self.rows)}
        return {"source": source, "seed": seed, **policy.to_dict()}

    def heldout_clips(self, size: int, per_photo: int = 8) -> torch.Tensor:
        """The held-out clips of a video run, (N, 3, frames, size, size): one per held-out video, or `per_photo`
        pans and zooms per held-out photo; the same clips every time (their own seed)."""
        if self.heldout and self.heldout[0].suffix.lower() in VIDEO_EXTENSIONS:
            clips = VideoFolder(self.heldout, self.clip_policy(size), seed=HELDOUT_SEED)
            return torch.stack([clips[i] for i in range(len(clips))])  # one per usable held-out video
        clips = PhotoClips(self.heldout, self.clip_policy(size), seed=HELDOUT_SEED, clips_per_photo=per_photo)
        return torch.stack([clips[i] for i in range(len(clips))])

    def describe(self) -> str:
        """One line for the run log."""
        caches = "".join(f"; teacher cache {c.path} ({c.samples} samples at {r} px)" for r, c in self.caches.items())
        if self.kind == "videos":
            return (f"{len(self.files)} videos in {self.name} ({self.n_bad} unreadable or too short skipped), clips of "
                    f"{self.frames} frames every 1-{self.max_stride}, {len(self.heldout)} held-out videos")
        if self.kind == "folder" and self.frames:
            return (f"{len(self.files)} photos in {self.name} as pan-and-zoom clips of {self.frames} frames "
                    f"({self.n_bad} unreadable skipped), {len(self.heldout)} held-out photos")
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
            rows = range(min(n, len(self.rows)))
            return torch.stack([center_crop(decode_image(self.rows[i][self.image_column]), size) for i in rows])
        if self.kind == "cache":
            raise DataError("A run from teacher caches alone has no raw images to look at; pass data.path too.")
        return self.stream(size, 1, 0).preview(n, size)


def detect_format(path: str) -> str:
    """folder, tar, hf or hf-stream, from what is at `path` (or how it is written, for remote data)."""
    try:
        return _detect_format(path)
    except PermissionError as exc:
        raise DataError(f"Cannot read '{exc.filename or path}': permission denied; make it readable or pass "
                        "another --data.") from None


def _detect_format(path: str) -> str:
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
    if not local.exists() and path.count("/") == 1 and not path.startswith(("/", ".", "~")):
        return "hf-stream"  # a Hub dataset id
    if not local.exists():
        raise DataError(f"Data path '{path}' does not exist; pass a folder of images, .tar shards, a datasets folder "
                        "or a Hub dataset id (user/name).")
    raise DataError(f"Cannot tell what '{path}' is: pass a folder of images, .tar shards, a datasets folder or a "
                    "Hub dataset id, and --data.format folder|tar|hf|hf-stream if needed.")


def scan_shared(path: str | Path, crop: int) -> tuple[list[Path], list[Path]]:
    """`scan_images`, split between the processes of a launch (each checks its share, all learn the result)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return scan_images(path, crop)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()

    def share(mine: tuple) -> list[tuple]:
        found: list = [None] * world
        torch.distributed.all_gather_object(found, mine)
        return found

    return scan_images(path, crop, rank, world, share)


HELDOUT_SEED = 1_234_567  # held-out clips are drawn with their own seed, so every run evaluates on the same ones


def make_train_source(recipe: Recipe, teacher=None, output_dir: str | Path | None = None) -> TrainSource:
    """The recipe's training data: opens and checks caches (against `teacher`), streams and folders.

    With a video teacher the samples are clips: from a folder of video files, or pans and zooms across a
    folder of photos (builtin:skimage included)."""
    if is_video_teacher(recipe.teacher):
        return _clip_source(recipe, teacher, output_dir)
    data, seed = recipe.data, recipe.train.seed
    clip_fields = [f"data.{f.name}" for f in dataclasses.fields(DataConfig) if f.name in ("frames", "max_stride")
                   and getattr(data, f.name) != f.default]
    if clip_fields:  # they would be recorded in recipe.json while the image run ignores them
        raise ConfigError(f"{' and '.join(clip_fields)} shape a video teacher's clips, but '{recipe.teacher.name}' is "
                          "an image VAE; drop them (or pass a video teacher).")
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
        good, bad = scan_shared(path, max(data.resolution, data.final_resolution or 0))
        source.files, held = split_holdout(good, 0 if data.eval_path else data.holdout)
        source.heldout, source.n_bad = heldout or held, len(bad)
        if not source.files:
            raise DataError(f"No training images left in '{path}' after holding out {len(held)}; add images.")
    elif kind == "tar":
        source.reader = TarShards(expand_shards(path), seed, data.shuffle_buffer)
    elif kind == "hf":
        source.rows = load_hf_rows(path, data.split)
    else:
        source.reader = HFStream(path, data.split, data.image_column, seed, data.shuffle_buffer)
    if kind != "folder" and data.holdout and not data.eval_path:
        logger.info("A %s source holds no images out: pass data.eval_path DIR for samples and the final evaluation.",
                    kind)
    for resolution, cache in caches.items():
        _check_crop_policy(recipe, source, resolution, cache)
    return source


def _clip_source(recipe: Recipe, teacher, output_dir: str | Path | None) -> TrainSource:
    """A video teacher's clips: video files if the folder holds any, else pans and zooms over its photos, and the
    teacher caches of clips (`tinyae cache-latents` with a video teacher)."""
    data = recipe.data
    caches = _open_caches(recipe, teacher)
    if data.path is None and not caches:
        raise DataError("No training data: pass --data DIR (video files, or photos to pan and zoom across), "
                        f"--data {BUILTIN_PHOTOS} for scikit-image's sample photos, or --data.cache DIR.")
    if data.path is None:
        held = _held_out_files(data.eval_path) if data.eval_path else []
        return TrainSource("cache", heldout=held, caches=caches, name=str(data.cache), frames=data.frames,
                           max_stride=data.max_stride)
    path = data.path
    if path == BUILTIN_PHOTOS:
        path = str(sample_photos(Path(output_dir or tempfile.mkdtemp(prefix="tinyae-")) / "data" / "skimage"))
    if data.format not in ("auto", "folder") or not Path(path).is_dir():
        raise DataError(f"A video teacher trains on a folder of video files ({', '.join(sorted(VIDEO_EXTENSIONS))}) "
                        f"or of photos; '{data.path}' is not one.")
    source = TrainSource("folder", name=data.path, frames=data.frames, max_stride=data.max_stride, caches=caches)
    videos = [p for p in Path(path).rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()]
    if videos:
        source.kind = "videos"
        images = [p for p in Path(path).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
        if images:  # a folder of both trains on its videos only: say so, rather than drop the photos silently
            logger.warning("'%s' holds %d video files and %d images: training on the videos only (the images are "
                           "ignored); put the photos in a folder of their own to train on pans and zooms over them.",
                           path, len(videos), len(images))
        files, _, skipped = scan_videos(list_videos(path), data.frames)  # unreadable and short ones, counted
        source.n_bad = len(skipped)
    else:
        files, bad = scan_shared(path, max(data.resolution, data.final_resolution or 0))
        source.n_bad = len(bad)
    eval_files = _held_out_files(data.eval_path) if data.eval_path else []
    source.files, held = split_holdout(files, 0 if data.eval_path else data.holdout)
    source.heldout = eval_files or held
    if not source.files:
        raise DataError(f"No training {'videos' if videos else 'photos'} left in '{path}' after holding out "
                        f"{len(held)}; add some or lower data.holdout.")
    for resolution, cache in caches.items():
        _check_crop_policy(recipe, source, resolution, cache)
    return source


def _held_out_files(path: str) -> list[Path]:
    """data.eval_path of a video run: its video files, else its photos."""
    return list_videos(path) if any(p.suffix.lower() in VIDEO_EXTENSIONS for p in Path(path).rglob("*")) else (
        list_images(path))


def _open_caches(recipe, teacher) -> dict[int, Any]:
    data = recipe.data
    wanted = [(p, r, f) for p, r, f in ((data.cache, data.resolution, "data.cache"),
                                         (data.final_cache, data.final_resolution, "data.final_cache")) if p]
    if not wanted:
        return {}
    if teacher is None:
        raise DataError("Opening a teacher cache needs the teacher, to check the cache was made with it.")
    if recipe.teacher.estimate_factors and recipe.teacher.scaling_factor is None:
        raise ConfigError("teacher.estimate_factors cannot be used with a teacher cache: the cache's latents already "
                        "carry the factors it was built with. Drop one of the two.")
    caches = {}
    for path, resolution, field_name in wanted:
        if resolution is None:
            raise ConfigError(f"{field_name} is set but data.final_resolution is not; set both or neither.")
        frames = data.frames if is_video_teacher(recipe.teacher) else 0
        cache = caches[resolution] = open_cache(path, teacher, resolution, frames=frames)
        if recipe.loss.target == "teacher" and not cache.with_targets:
            logger.warning("Cache %s has no teacher reconstructions: loss.target=teacher will run the teacher's "
                           "decoder every step (build with --with-targets to avoid it).", path)
    phases = {data.resolution} | ({data.final_resolution} if data.final_steps and data.final_resolution else set())
    for resolution in sorted(phases - set(caches)):
        logger.info("No teacher cache for the %d px phase: it runs the teacher on the fly.", resolution)
    return caches


def crop_policy(data: DataConfig, resolution: int) -> CropPolicy:
    """The recipe's crops at one phase's size."""
    return CropPolicy(resolution, data.max_zoom_out, data.hflip, data.color_aug, data.crop_scale)


def _check_crop_policy(recipe, source: TrainSource, resolution: int, cache) -> None:
    """A cache made with other crop settings still trains correctly; say so, because the data differ."""
    data = recipe.data
    ours = source.fingerprint(crop_policy(data, resolution), recipe.train.seed, data.holdout)
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


def make_train_loader(files: list[Path] | TrainSource, policy: CropPolicy | int, batch_size: int, seed: int,
                      start_step: int = 0, num_steps: int | None = None, rank: int = 0, world_size: int = 1,
                      num_workers: int = 0, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """Batches for steps [start_step, start_step + num_steps) of this rank.

    Every batch has "images" (B, 3, R, R) in [-1, 1]; from a teacher cache also "latents"
    (and "targets" if the cache has them). `files` is a list of images or a TrainSource;
    `policy` says how crops are drawn (an int: crops of that size, default zoom and flips).
    """
    source = files if isinstance(files, TrainSource) else TrainSource("folder", files=list(files))
    policy = as_crop_policy(policy)
    dataset = source.dataset(policy, seed)
    if dataset is None:  # a stream batches itself, in step order whatever the number of workers
        stream = source.stream(policy, batch_size, seed, start_step, num_steps, rank, world_size)
        return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory)
    sampler = StepSampler(batch_size, start_step, rank, world_size, num_steps)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=collate_samples,
        pin_memory=pin_memory, persistent_workers=False,
    )


# --- a recipe's teacher cache -------------------------------------------------------------------------------


def default_samples(recipe: Recipe, final: bool = False) -> int:
    """Samples one process draws in the phase: one pass over them needs no repeat."""
    data, train = recipe.data, recipe.train
    steps = data.final_steps if final else train.steps - (data.final_steps if data.final_resolution else 0)
    return max(steps, 1) * train.batch_size * train.grad_accum


def cache_recipe(recipe: Recipe, out: str | Path, samples: int | None = None, shard_size: int = 1024,
                 with_targets: bool = False, final: bool = False, batch_size: int = 8, show_progress: bool = True
                 ) -> Path:
    """Build or finish the cache one training phase of `recipe` reads (data.resolution, or the final one).

    Crops are those the recipe's run would draw (same data, seed, zoom, flips), so training
    from the cache sees the batches of on-the-fly training. Under `accelerate launch` the
    processes split the shards between them.
    """
    data = recipe.data
    resolution = data.final_resolution if final else data.resolution
    if resolution is None:
        raise DataError("--final needs data.final_resolution in the recipe (or --data.final_resolution R).")
    if samples is not None and samples < 1:
        raise ConfigError(f"--samples must be positive, got {samples} (leave it out for one pass of the phase).")
    samples = samples or default_samples(recipe, final)
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))  # as Accelerator reads it: gloo on CPUs
    video = is_video_teacher(recipe.teacher)
    teacher = (load_video_teacher_for(recipe.teacher, state.device) if video
               else load_teacher(recipe.teacher, device=state.device))
    if video:
        check_clip_frames(teacher, data.frames, teacher.time_downscale)
    plain = dataclasses.replace(recipe, data=dataclasses.replace(data, cache=None, final_cache=None))
    source = make_train_source(plain)
    seed, policy = recipe.train.seed, crop_policy(data, resolution)
    frames = data.frames if video else 0
    header = cache_header(teacher, resolution, samples, shard_size, with_targets,
                          source.fingerprint(policy, seed, data.holdout), frames)
    if state.is_main_process:
        start_cache(out, header)
        logger.info("Caching %d samples of %d px crops from %s with teacher %s into %s (%d shards).", samples,
                    resolution, data.path, teacher.name, out, num_shards(samples, shard_size))
    state.wait_for_everyone()
    bar = tqdm(total=num_shards(samples, shard_size), disable=not (show_progress and state.is_main_process),
               desc="cache")
    build_cache(teacher, lambda start, count: source.crops(policy, seed, start, count),
                out, resolution, samples, shard_size, with_targets, header["crop_policy"], batch_size,
                state.process_index,
                state.num_processes, progress=lambda k, total: bar.update(min(state.num_processes, total - bar.n)),
                frames=frames)
    bar.close()
    state.wait_for_everyone()
    if state.is_main_process:
        finish_cache(out)
        logger.info("Teacher cache ready: %s (train with --data.%s %s).", out, "final_cache" if final else "cache", out)
    state.wait_for_everyone()
    return Path(out)
