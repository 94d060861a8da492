"""Training images/s with the teacher on the fly vs. from the teacher cache, in one run.

    tinyae bench-train                                   # SD-VAE teacher, 128 and 256 px, CPU
    tinyae bench-train --target teacher --resolutions 256 --steps 5 --out bench-train.json

The teacher is the preset's architecture with random weights (speed does not depend on
weights). Prints a table: images/s and the per-image split of a step (data, teacher,
student, discriminator), and the cache's speed-up at each crop size.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from tinyae.training.throughput import bench_train, format_report


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
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")


def run(args: argparse.Namespace, overrides: list[str]) -> None:
    report = bench_train(tuple(args.resolutions), args.batch_size, args.steps, args.teacher, args.target,
                         not args.no_adv, not args.no_lpips, args.channels_last, args.threads, args.device)
    print(format_report(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
