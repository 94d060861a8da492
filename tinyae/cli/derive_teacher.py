"""Build a "fine-tuned VAE" teacher from a published TAE, to measure warm starts on (docs/warm-start.md).

    tinyae derive-teacher --data PHOTOS --out runs/teacher-f2x --seed 0 --steps 300 --threads 1

Its latent space is a random invertible linear transform of the donor's (TAEF2 by default) and its decoder
is fine-tuned toward another look (warmer, more contrast). The same seed and photos give the same teacher.
"""

from __future__ import annotations

import argparse
import json

import torch

from tinyae.config import check_range
from tinyae.training.derived_teacher import check_derive_arguments, derive_teacher


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="folder of training photos (searched recursively)")
    parser.add_argument("--out", required=True, help="output folder (a TinyAutoencoder folder that --teacher takes)")
    parser.add_argument("--donor", default="taef2", help="the published TAE it derives from (preset, pair, folder)")
    parser.add_argument("--seed", type=int, default=0, help="picks the latent transform and the crops")
    parser.add_argument("--steps", type=int, default=300, help="decoder fine-tune steps toward the new look")
    parser.add_argument("--resolution", type=int, default=128, help="crop size in px")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace, overrides: list[str]) -> None:
    check_range("--threads", args.threads, high=1024)
    check_derive_arguments(args.steps, args.resolution, args.batch_size, args.lr, args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    record = derive_teacher(args.data, args.out, donor=args.donor, seed=args.seed, steps=args.steps,
                            resolution=args.resolution, batch_size=args.batch_size, lr=args.lr,
                            overwrite=args.overwrite)
    print(json.dumps(record, indent=2))
