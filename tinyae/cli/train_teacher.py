"""Train the small AutoencoderKL teacher that tinyae ships for offline runs (weights/tiny-teacher).

    tinyae train-teacher --data PHOTOS --out weights/tiny-teacher --eval-data KODAK --max-minutes 32 --threads 1
    tinyae train-teacher --video --data builtin:skimage --out weights/tiny-wan --max-minutes 15 --threads 1

Writes a diffusers folder (config.json with the estimated scaling_factor, fp16
diffusion_pytorch_model.safetensors, training.json with the metrics) atomically,
and prints the metrics. See weights/tiny-teacher/README.md for how the shipped one was made. With --video it
trains the small AutoencoderKLWan video teacher (weights/tiny-wan) on pan-and-zoom clips of the photos instead.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from tinyae.config import check_range
from tinyae.data.images import BUILTIN_PHOTOS, sample_photos
from tinyae.errors import ConfigError
from tinyae.training.tiny_teacher import (
    check_teacher_arguments,
    check_video_frames,
    train_small_vae,
    train_small_video_vae,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="folder of training photos (searched recursively)")
    parser.add_argument("--out", required=True, help="output folder for the diffusers VAE")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--resolution", type=int, default=96, help="training crop size in px")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--kl-weight", type=float, default=1e-6, help="weight of the per-element KL term")
    parser.add_argument("--lpips-weight", type=float, default=0.0, help="LPIPS term; 0 = off")
    parser.add_argument("--holdout", type=int, default=6, help="images of --data kept out for the PSNR")
    parser.add_argument("--eval-data", action="append", default=[], help="extra evaluation folder (repeatable)")
    parser.add_argument("--eval-resolution", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--max-zoom-out", type=float, default=4.0)
    parser.add_argument("--max-minutes", type=float, help="wall-clock budget for training")
    parser.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy CPU)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: autocast + channels_last, faster on CPUs with AVX512-bf16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--video", action="store_true",
                        help="train the small AutoencoderKLWan video teacher on pan-and-zoom clips of --data")
    parser.add_argument("--frames", type=int, default=5, help="--video: frames per clip (1 + 4k)")


# Options of the image teacher's training that the video teacher's does not have (its loop is L1 + KL, fp32, clips
# synthesised in the process): refused with --video rather than dropped.
IMAGE_ONLY = ("lpips_weight", "eval_data", "eval_resolution", "max_zoom_out", "workers", "precision")


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse before any work what cannot run, or would be silently dropped."""
    check_range("--threads", args.threads, high=1024)
    check_range("--workers", args.workers, low=0, high=64)
    check_range("--holdout", args.holdout, low=0)
    if args.max_minutes is not None:
        check_range("--max-minutes", args.max_minutes, low=1e-3)
    if args.video:
        dropped = [f"--{name.replace('_', '-')}" for name in IMAGE_ONLY
                   if getattr(args, name) != args.parser.get_default(name)]
        if dropped:
            raise ConfigError(f"{', '.join(dropped)} apply to the image teacher only: the --video teacher trains in "
                              "fp32 on L1 + KL, on clips made in the process, and is evaluated on its held-out photos; "
                              "drop them.")
        check_video_frames(args.frames)
    elif args.frames != args.parser.get_default("frames"):
        raise ConfigError("--frames applies to the --video teacher only; drop it or pass --video.")
    check_teacher_arguments(args.steps, args.resolution, args.batch_size, args.lr, args.seed,
                            [] if args.video else args.eval_resolution)


def run(args: argparse.Namespace, overrides: list[str]) -> None:
    check_arguments(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.video:
        data = args.data
        if data == BUILTIN_PHOTOS:
            data = sample_photos(Path(tempfile.mkdtemp(prefix="tinyae-")) / "skimage")
        metrics = train_small_video_vae(
            data, args.out, steps=args.steps, frames=args.frames, resolution=args.resolution,
            batch_size=args.batch_size, lr=args.lr, kl_weight=args.kl_weight, holdout=args.holdout, seed=args.seed,
            max_minutes=args.max_minutes, overwrite=args.overwrite)
        print(json.dumps(metrics, indent=2))
        return
    metrics = train_small_vae(
        args.data, args.out, steps=args.steps, resolution=args.resolution, batch_size=args.batch_size, lr=args.lr,
        kl_weight=args.kl_weight, lpips_weight=args.lpips_weight, holdout=args.holdout,
        eval_resolutions=args.eval_resolution, eval_dirs=args.eval_data, max_zoom_out=args.max_zoom_out,
        seed=args.seed, num_workers=args.workers, max_minutes=args.max_minutes, precision=args.precision,
        overwrite=args.overwrite,
    )
    print(json.dumps({k: v for k, v in metrics.items() if k != "losses"}, indent=2))
