"""Training images/s with the teacher on the fly vs. from the teacher cache, in one run.

    tinyae bench-train                                   # SD-VAE teacher, 128 and 256 px, CPU
    tinyae bench-train --target teacher --resolutions 256 --steps 5 --out bench-train.json
    tinyae bench-train --data photos/ --resolutions 96      # your own photos: their decoding counts as data time

The teacher is the preset's architecture with random weights (speed does not depend on
weights). Prints a table: images/s and the per-image split of a step (data, teacher,
student, discriminator), and the cache's speed-up at each crop size.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from tinyae.config import MAX_BATCH, MAX_RESOLUTION, MIN_RESOLUTION, check_range
from tinyae.training.throughput import bench_train, format_report
from tinyae.utils.atomic import check_writable_file, write_text_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", default="sd", help="preset whose architecture to build (sd, sdxl, sd3, flux)")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per source (after one warm-up)")
    parser.add_argument("--target", choices=["image", "teacher"], default="image", help="decoder target (loss.target)")
    parser.add_argument("--no-adv", action="store_true", help="leave the discriminator out")
    parser.add_argument("--no-lpips", action="store_true", help="leave LPIPS out")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (0: torch's default); on a busy CPU, OpenMP threads spin against other "
                             "processes and distort small kernels most, so 1 is the stable figure")
    parser.add_argument("--data", type=Path, help="a folder of images to crop from (default: scikit-image's sample "
                        "photos, small PNGs); full-size photos show what decoding costs")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")


def run(args: argparse.Namespace, overrides: list[str]) -> None:
    check_range("--resolutions", *args.resolutions, low=MIN_RESOLUTION, high=MAX_RESOLUTION, multiple=8)
    check_range("--batch-size", args.batch_size, high=MAX_BATCH)
    check_range("--steps", args.steps, high=10_000)
    check_range("--threads", args.threads, low=0, high=1024)
    if args.out:
        check_writable_file(args.out)  # before the benchmark, not after it
    report = bench_train(tuple(args.resolutions), args.batch_size, args.steps, args.teacher, args.target,
                         not args.no_adv, not args.no_lpips, args.channels_last, args.threads, args.device,
                         data=args.data)
    print(format_report(report))
    if args.out:
        write_text_file(args.out, json.dumps(report, indent=2))
