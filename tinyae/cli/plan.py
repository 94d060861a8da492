"""Before a run: does each phase fit the GPU, and about how long will it take?

    tinyae plan --teacher sdxl --gpu a100 h100 4090        # the sdxl recipe on three cards
    tinyae plan --teacher flux2 --gpu 4090 --batch_size 8  # any distill flag changes the plan
    tinyae plan --recipe smoke --verify 128 160             # also measure whole steps: planned vs measured

For each phase (the long small-crop phase, the closing one at data.final_resolution): the
memory per device of the weights with Adam's state and the EMA, the replay buffer, the
teacher's no-grad encode, the student's step and what the discriminator adds, measured with
the library's own training step on this CPU at 64 and 96 px and scaled to the phase's size
and batch; the device's memory (the GPU present, or --gpu's card); and the time per step and
per phase from MAC counts at an assumed share of the card's throughput. `tinyae distill`
prints the same table on a GPU and refuses a phase that cannot fit.
"""

from __future__ import annotations

import argparse
import dataclasses

from tinyae.cli import distill
from tinyae.config import Recipe
from tinyae.errors import ConfigError
from tinyae.training.budget import (
    GPUS,
    SMALL,
    format_plan,
    measured,
    measured_peak,
    phase_memory,
    plan_on,
    planned_precision,
    refusal,
)
from tinyae.training.loop import phase_plan

OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    distill.add_arguments(parser)
    parser.add_argument("--gpu", choices=sorted(GPUS), nargs="+", default=[None],
                        help="plan for these cards, from one measurement (default: the GPU present)")
    parser.add_argument("--verify", type=int, nargs="+", default=[], metavar="PX",
                        help="also measure a whole step at these sizes (batch 2) and print planned vs measured")


def recipe(args: argparse.Namespace, overrides: list[str]) -> Recipe:
    return distill.recipe(args, overrides)


def run(args: argparse.Namespace, overrides: list[str]) -> None:
    planned = recipe(args, overrides)
    for size in args.verify:
        if size % 16 or size < SMALL[0]:
            raise ConfigError(f"--verify {size}: pass sizes of at least {SMALL[0]} px in multiples of 16.")
    phases = phase_plan(planned)
    report = measured(planned, planned_precision(planned.train.mixed_precision), phases, args.verify)
    for card in args.gpu:
        plan = plan_on(planned, report, phases, card)
        print(format_plan(plan) + "\n")
        problem = refusal(plan)
        if problem:
            print(f"{problem}\n")
    # the whole steps were measured with the teacher in fp32, as the fits were: compare like with like
    as_measured = dataclasses.replace(planned, teacher=dataclasses.replace(planned.teacher, dtype="fp32"))
    for size, step in report.get("checks", {}).items():
        expected = phase_memory(as_measured, report, int(size), 2)["total"]
        actual = measured_peak(step)
        print(f"{size} px, batch 2: planned {expected / 2**20:.1f} MB, measured {actual / 2**20:.1f} MB "
              f"({(expected - actual) / actual:+.1%})")
