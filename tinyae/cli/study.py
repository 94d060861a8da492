"""The quality study: train students of every arm of the recipe comparison from the TAEF2 teacher, evaluate them
on Kodak-24 and write docs/quality.md.

    tinyae study --kodak KODAK                       # fetches the Debian photos, 18 arms (15 recipe changes, 3 sizes) x 2 seeds, 2 runs at a time
    tinyae study --kodak KODAK --arms full baseline --seeds 0 1 2 --steps 600
    tinyae study --kodak KODAK --arms baseline adaptive_gradient --steps 1000 --curve-every 250 \
        --reference baseline --out runs/study-1000   # longer, with Kodak metrics every 250 steps
    tinyae study --kodak KODAK --report-only         # rewrite the report from the finished runs
    tinyae study --kodak KODAK --regime finetune --teacher.name runs/teacher-f2x --student.init taef2 \
        --steps 250 --out runs/study-warm --report docs/quality-warm.md --figures docs/quality-warm   # warm starts

KODAK is a folder with Kodak-24 (kodim01.png ... kodim24.png, http://r0k.us/graphics/kodak/). Finished runs are
kept in --out and never trained again, so an interrupted study resumes. Any recipe field given as
--section.field value applies to every arm.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from tinyae.config import MAX_RESOLUTION, MIN_RESOLUTION, Recipe, check_range, load_recipe, parse_overrides
from tinyae.training.study import REGIMES, RESOLUTIONS, Study, default_photos, read_bench, run_study, write_report

OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kodak", type=Path, required=True, help="folder of the Kodak-24 evaluation images")
    parser.add_argument("--photos", type=Path, help="training photos (default: fetch Debian's into OUT/photos)")
    parser.add_argument("--out", type=Path, default=Path("runs/study"), help="runs, logs and the Kodak references")
    parser.add_argument("--arms", nargs="+", default=[], help="only these arms (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run, 10%% of them at the end size")
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--resolutions", type=int, nargs="+", default=list(RESOLUTIONS),
                        help="Kodak centre-crop sizes, px (checkpoints along training: the smallest)")
    parser.add_argument("--report", type=Path, default=Path("docs/quality.md"))
    parser.add_argument("--figures", type=Path, default=Path("docs/quality"))
    parser.add_argument("--bench", type=Path, help="a `tinyae bench --sizes ...` bench.json: the sizes' speed axis")
    parser.add_argument("--regime", default="study", choices=sorted(REGIMES),
                        help="study: students from scratch with the study recipe; finetune: warm starts with the "
                             "finetune recipe (name the donor and teacher: --student.init taef2 --teacher.name T)")
    parser.add_argument("--reference", default="", help="the arm every other arm is compared with (default: the "
                                                      "regime's first arm)")
    parser.add_argument("--curve-every", type=int, default=0, metavar="N",
                        help="keep a checkpoint every N steps and evaluate each (Kodak metrics along training)")
    parser.add_argument("--report-only", action="store_true", help="do not train; report the finished runs")


def recipe(args: argparse.Namespace, overrides: list[str]) -> Recipe:
    """The study recipe with the overrides every arm gets: a wrong field stops here, before photos are fetched."""
    return load_recipe(REGIMES[args.regime].recipe, parse_overrides(overrides))


def check_arguments(args: argparse.Namespace) -> None:
    """The study's own counts, named as its flags, before photos are fetched or a reference is written."""
    check_range("--steps", args.steps, high=10_000_000)
    check_range("--parallel", args.parallel, high=64)
    check_range("--threads", args.threads, high=1024)
    check_range("--seeds", *args.seeds, low=0)  # torch seeds are 0 or more
    check_range("--resolutions", *args.resolutions, low=MIN_RESOLUTION, high=MAX_RESOLUTION)
    check_range("--curve-every", args.curve_every, low=0)


def run(args: argparse.Namespace, overrides: list[str]) -> None:
    check_arguments(args)
    recipe(args, overrides)
    study = Study(out=args.out, photos=args.photos or default_photos(args.out), kodak=args.kodak, steps=args.steps,
                  seeds=tuple(args.seeds), arm_names=tuple(args.arms), parallel=args.parallel, threads=args.threads,
                  overrides=parse_overrides(overrides), reference=args.reference, curve_every=args.curve_every,
                  fetch_photos=args.photos is None, regime=args.regime,
                  resolutions=tuple(args.resolutions))
    if not args.report_only:
        run_study(study)
    bench = read_bench(args.bench) if args.bench else None
    command = "tinyae " + shlex.join(a for a in args.argv if a != "--report-only")  # what trains the runs
    path = write_report(study, args.report, args.figures, command=command, bench=bench)
    print(f"Report: {path}")

