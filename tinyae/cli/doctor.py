"""Check the training job on the GPU(s) present in minutes, before a run spends hours.

    tinyae doctor --teacher sdxl --data DIR                       # one GPU: a few steps of each phase
    accelerate launch scripts/doctor.py --teacher sdxl --data DIR  # several GPUs: DDP too

Runs 3 steps (after a warm-up) of each phase at the recipe's real crop size and batch, with
the same flags as `distill`, and prints images/s, peak memory against `tinyae plan`'s
figure, the precision accelerate actually uses, whether compiled code ran, and whether a
save-then-resume gives the next step's weights bit for bit.
"""

from __future__ import annotations

import argparse

from tinyae.cli import distill
from tinyae.config import Recipe, check_positive
from tinyae.training.checkup import checkup, format_checkup

OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    distill.add_arguments(parser)
    parser.add_argument("--doctor-steps", type=int, default=3, help="timed steps per phase (after one warm-up)")
    parser.add_argument("--no-plan", action="store_true", help="skip the memory plan (saves its CPU measurement)")


def recipe(args: argparse.Namespace, overrides: list[str]) -> Recipe:
    return distill.recipe(args, overrides)


def run(args: argparse.Namespace, overrides: list[str]) -> None:
    check_positive("--doctor-steps", args.doctor_steps)
    report = checkup(recipe(args, overrides), args.doctor_steps, not args.no_plan)
    if report["main"]:
        print(format_checkup(report))
