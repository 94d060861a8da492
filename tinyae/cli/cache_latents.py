"""Encode training crops once with the teacher, so training reads latents from disk instead of running it.

    tinyae cache-latents --teacher sd --data DIR --out cache/sd-96 --resolution 96 --samples 1000000
    accelerate launch scripts/cache_latents.py --recipe sd --data DIR --out cache/sd-256 --final --with-targets
    tinyae distill --recipe sd --data DIR --data.cache cache/sd-96 --data.final_cache cache/sd-256
    tinyae cache-latents --teacher wan2.1 --data VIDEOS --out cache/wan-64 --resolution 64 --data.frames 13

With a video teacher the cache holds the recipe's clips (data.frames frames) and their latents.

Re-running the same command resumes an interrupted build. Any recipe field can be
overridden as --section.field value (seed, zoom, flips and holdout decide the crops).
"""

from __future__ import annotations

import argparse

from tinyae.config import MAX_BATCH, Recipe, check_range, choose_recipe, load_recipe
from tinyae.data.cache import verify_cache
from tinyae.data.source import cache_recipe
from tinyae.models.video_teacher import is_video_teacher

OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", help="recipe name (tinyae's recipes/) or a .yaml path (default: the teacher's)")
    parser.add_argument("--out", required=True, help="cache folder (created, or resumed if it holds this cache)")
    parser.add_argument("--samples", type=int, help="crops to cache (default: what one process draws in the phase)")
    parser.add_argument("--shard-size", type=int, default=1024, help="crops per safetensors shard")
    parser.add_argument("--with-targets", action="store_true", help="also store the teacher's reconstructions")
    parser.add_argument("--final", action="store_true", help="cache the final_resolution phase")
    parser.add_argument("--batch-size", type=int, default=8, help="crops per teacher call")
    parser.add_argument("--verify", action="store_true", help="only check every shard against its sha256")


def recipe(args: argparse.Namespace, overrides: list[str]) -> Recipe:
    return load_recipe(choose_recipe(args.recipe, overrides, is_video_teacher), overrides)


def run(args: argparse.Namespace, overrides: list[str]) -> None:
    check_range("--samples", args.samples)  # 0 is not "the default": leave the flag out for that
    check_range("--shard-size", args.shard_size, high=65536)
    check_range("--batch-size", args.batch_size, high=MAX_BATCH)
    if args.verify:
        print(f"{args.out}: {verify_cache(args.out)} samples, every shard matches its sha256")
        return
    cache_recipe(recipe(args, overrides), args.out, args.samples, args.shard_size, args.with_targets, args.final,
                 args.batch_size)
