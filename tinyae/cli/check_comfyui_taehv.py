"""Check that ComfyUI's own loader (and, optionally, upstream taehv.py) reads tinyae's TAEHV exports and decodes
the same frames as tinyae.

    tinyae check-comfyui-taehv --comfyui /path/to/ComfyUI [--taehv /path/to/taehv] \\
        [--model taew2_1 taew2_2 taehv] [--student runs/wan/student] [--dtype fp32]

The checkouts are used unmodified (ComfyUI needs its requirements.txt installed and runs on the CPU).
Without --student each model is checked with a seeded random student of its layout. Prints, per file,
the loader ComfyUI picked, the latent format it applies and the largest difference from tinyae's frames
(or the loader's error); with --taehv also the encode, decode and preview-switch differences, or "skipped"
for a layout the checkout does not build (taeltx2_3_wide lives on a branch of madebyollin/taehv).
It exits with 1 when a difference is over --tolerance (default 1e-4 for fp32 files, 1e-2 for fp16) or not a
number.
"""

from __future__ import annotations

import argparse
import sys

from tinyae.errors import ExportError
from tinyae.models.video_student import VIDEO_MODELS, load_video_student
from tinyae.shipping.taehv_check import TOLERANCE, failures, format_results, run_checks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--comfyui", help="a ComfyUI checkout")
    parser.add_argument("--taehv", help="a madebyollin/taehv checkout (its taehv.py)")
    parser.add_argument("--model", nargs="+", choices=list(VIDEO_MODELS),
                        help="models to export and check (default: taew2_1 taew2_2 taehv; with --student: the "
                             "model it was distilled for)")
    parser.add_argument("--student", help="a VideoStudent folder or TAEHV file (default: seeded random weights)")
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32")
    parser.add_argument("--tolerance", type=float, help="the largest difference that passes (default: "
                        + ", ".join(f"{v:g} for {k} files" for k, v in TOLERANCE.items()) + "); above it, or NaN, "
                        "the command exits with 1")


def run(args: argparse.Namespace, overrides: list[str]) -> None:
    if not args.comfyui and not args.taehv:
        raise ExportError("Nothing to check against: pass --comfyui DIR (a ComfyUI checkout) and/or --taehv DIR.")
    if args.tolerance is not None and not args.tolerance >= 0:
        raise ExportError(f"--tolerance {args.tolerance} is not a difference; pass a number >= 0 (say 1e-4).")
    models = args.model or default_models(args.student)
    results = run_checks(args.comfyui, args.taehv, models, args.student, args.dtype)
    for loader, rows in results.items():
        if rows:
            print(f"{loader}:\n{format_results(rows)}")
    bad = failures(results, args.tolerance)
    if bad:
        print(f"FAILED: {len(bad)} difference{'s' if len(bad) > 1 else ''} over the tolerance: {'; '.join(bad)}",
              file=sys.stderr)
        sys.exit(1)
    print("OK: every difference is within the tolerance.")


def default_models(student: str | None) -> list[str]:
    """A student is checked as the model it was distilled for; seeded students in ComfyUI's three layouts."""
    if student is None:
        return ["taew2_1", "taew2_2", "taehv"]
    name = load_video_student(student).taehv_name
    if name is None:
        raise ExportError(f"'{student}' does not say which published model it stands for; pass --model "
                          f"({', '.join(VIDEO_MODELS)}).")
    return [name]
