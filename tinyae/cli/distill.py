"""Distill a tiny autoencoder from a frozen VAE.

    accelerate launch scripts/distill.py --teacher sdxl --data DIR --output runs/sdxl
    tinyae distill --recipe smoke --output runs/smoke        # offline, CPU, a few minutes
    tinyae distill --teacher wan2.1 --data VIDEOS --output runs/wan   # a TAEHV video student (recipe: video)
    tinyae distill --recipe video-smoke --output runs/vsmoke  # offline video check, CPU, under 10 minutes

Any recipe field can be overridden as --section.field value (e.g. --train.steps 2000);
short aliases: --teacher, --data, --output, --resume, --steps, --batch_size, --resolution.
"""

from __future__ import annotations

import argparse

from tinyae.config import Recipe, choose_recipe, load_recipe
from tinyae.models.video_teacher import is_video_teacher
from tinyae.training.loop import distill

OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", help="recipe name (tinyae's recipes/) or a .yaml path (default: the teacher's)")


def recipe(args: argparse.Namespace, overrides: list[str]) -> Recipe:
    return load_recipe(choose_recipe(args.recipe, overrides, is_video_teacher), overrides)


def run(args: argparse.Namespace, overrides: list[str]) -> None:
    distill(recipe(args, overrides))
