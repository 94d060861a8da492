"""Inspect a VAE's latent space before distilling it: factors, per-channel statistics, posterior, outliers, locality.

    tinyae inspect-vae --vae sd --data photos/ --out reports/sd
    tinyae inspect-vae --vae qwen-image --data photos/   # per-channel latents_mean / latents_std, estimated
    tinyae inspect-vae --vae path/to/student             # AutoencoderTiny / TinyAutoencoder folders work too

Writes report.md, report.json and PNG figures to --out and prints the recommended factors
(per channel for the families that normalise per channel: Qwen-Image, FLUX.2).
"""

from __future__ import annotations

import argparse
import shlex

import torch

from tinyae.config import MAX_BATCH, MAX_RESOLUTION, check_range
from tinyae.evaluation.inspection import inspect_vae, load_images, open_vae, summary
from tinyae.utils.atomic import check_writable
from tinyae.utils.dtypes import DTYPES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vae", "--teacher", dest="vae", required=True,
                        help="preset (sd, sdxl, sd3, flux, flux2, sana, qwen-image, tiny), Hub repo id, or local "
                             "diffusers VAE folder (any class tinyae distills from, students too)")
    parser.add_argument("--subfolder", help="subfolder of the repo or folder holding the VAE (e.g. vae)")
    parser.add_argument("--random-weights", action="store_true",
                        help="a preset's architecture with random weights: only architecture checks mean anything")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", help="image folder (searched recursively); default: scikit-image's sample photos")
    parser.add_argument("--out", default="vae-report", help="report folder (default: vae-report)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    parser.add_argument("--resolution", type=int, default=256, help="centre-crop size of the images")
    parser.add_argument("--max-images", type=int, default=32, help="images used, spread over the folder")
    parser.add_argument("--z-threshold", type=float, default=5.0,
                        help="robust z-score above which a value is an outlier")
    parser.add_argument("--min-frequency", type=float, default=0.5,
                        help="fraction of images in which an outlier must recur to be reported")
    parser.add_argument("--delta", type=float, default=3.0, help="size of a one-position latent edit, in channel std")
    parser.add_argument("--threshold", type=float, default=1 / 255,
                        help="pixel change (image range [0, 1]) that counts as changed")
    parser.add_argument("--locality-images", type=int, default=2, help="images used for the edit experiments")
    parser.add_argument("--positions", type=int, default=4, help="random ordinary positions edited per image")
    parser.add_argument("--bootstrap", type=int, default=4000, help="bootstrap resamples for the intervals")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace, overrides: list[str]) -> None:
    check_range("--resolution", args.resolution, low=8, high=MAX_RESOLUTION)
    check_range("--max-images", args.max_images, high=MAX_BATCH)  # held in memory together
    check_range("--locality-images", args.locality_images, high=MAX_BATCH)
    check_range("--positions", args.positions, high=10_000)
    check_range("--bootstrap", args.bootstrap, high=1_000_000)
    check_writable(args.out, "--out")  # before opening the VAE and decoding anything
    vae = open_vae(args.vae, args.subfolder, args.dtype, args.device, args.random_weights)
    images, sources = load_images(args.data, args.resolution, args.max_images)
    report = inspect_vae(
        vae, images, args.out, sources=sources, z_threshold=args.z_threshold, min_frequency=args.min_frequency,
        delta=args.delta, threshold=args.threshold, locality_images=args.locality_images,
        ordinary_positions=args.positions, num_bootstrap=args.bootstrap, seed=args.seed,
        overwrite=args.overwrite, command="tinyae " + shlex.join(args.argv),
    )
    print(summary(report))
    print(f"report: {args.out}/report.md")
