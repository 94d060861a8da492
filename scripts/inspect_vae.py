"""Inspect a VAE's latent space before distilling it: scale/shift factors, posterior, recurring outliers, locality.

    python scripts/inspect_vae.py --vae sd --data photos/ --out reports/sd
    python scripts/inspect_vae.py --vae path/to/student   # AutoencoderTiny folders work too

Writes report.md, report.json and PNG figures to --out and prints the recommended factors.
"""

from __future__ import annotations

import argparse
import shlex
import sys

import torch

from tinyae.diagnose import inspect_vae, load_images, open_vae, summary
from tinyae.errors import TinyaeError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vae", "--teacher", dest="vae", required=True,
                   help="preset (sd, sdxl, sd3, flux, tiny), Hub repo id, or local diffusers VAE folder "
                        "(AutoencoderKL or AutoencoderTiny)")
    p.add_argument("--subfolder", help="subfolder of the repo or folder holding the VAE (e.g. vae)")
    p.add_argument("--random-weights", action="store_true",
                   help="a preset's architecture with random weights: only architecture checks mean anything")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", help="image folder (searched recursively); default: scikit-image's sample photos")
    p.add_argument("--out", default="vae-report", help="report folder (default: vae-report)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    p.add_argument("--resolution", type=int, default=256, help="centre-crop size of the images")
    p.add_argument("--max-images", type=int, default=32, help="images used, spread over the folder")
    p.add_argument("--z-threshold", type=float, default=5.0, help="robust z-score above which a value is an outlier")
    p.add_argument("--min-frequency", type=float, default=0.5,
                   help="fraction of images in which an outlier must recur to be reported")
    p.add_argument("--delta", type=float, default=3.0, help="size of a one-position latent edit, in channel std")
    p.add_argument("--threshold", type=float, default=1 / 255,
                   help="pixel change (image range [0, 1]) that counts as changed")
    p.add_argument("--locality-images", type=int, default=2, help="images used for the edit experiments")
    p.add_argument("--positions", type=int, default=4, help="random ordinary positions edited per image")
    p.add_argument("--bootstrap", type=int, default=4000, help="bootstrap resamples for the intervals")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        vae = open_vae(args.vae, args.subfolder, args.dtype, args.device, args.random_weights)
        images, sources = load_images(args.data, args.resolution, args.max_images)
        report = inspect_vae(
            vae, images, args.out, sources=sources, z_threshold=args.z_threshold, min_frequency=args.min_frequency,
            delta=args.delta, threshold=args.threshold, locality_images=args.locality_images,
            ordinary_positions=args.positions, num_bootstrap=args.bootstrap, seed=args.seed,
            overwrite=args.overwrite, command="python scripts/inspect_vae.py " + shlex.join(argv),
        )
    except TinyaeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary(report))
    print(f"report: {args.out}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
