"""Check that ComfyUI's own loader (and, optionally, upstream taehv.py) reads tinyae's TAEHV exports and decodes
the same frames as tinyae.

    tinyae check-comfyui-taehv --comfyui /path/to/ComfyUI [--taehv /path/to/taehv] \\
        [--model taew2_1 taew2_2 taehv] [--student runs/wan/student] [--dtype fp32]

The checkouts are used unmodified (ComfyUI needs its requirements.txt installed and runs on the CPU).
Without --student each model is checked with a seeded random student of its layout. Prints, per file,
the loader ComfyUI picked, the latent format it applies and the largest difference from tinyae's frames.
"""

from __future__ import annotations

import argparse

from tinyae.errors import ExportError
from tinyae.models.video_student import VIDEO_MODELS
from tinyae.shipping.taehv_check import format_results, run_checks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--comfyui", help="a ComfyUI checkout")
    parser.add_argument("--taehv", help="a madebyollin/taehv checkout (its taehv.py)")
    parser.add_argument("--model", nargs="+", choices=list(VIDEO_MODELS), default=["taew2_1", "taew2_2", "taehv"])
    parser.add_argument("--student", help="a VideoStudent folder or TAEHV file (default: seeded random weights)")
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32")


def run(args: argparse.Namespace, overrides: list[str]) -> None:
    if not args.comfyui and not args.taehv:
        raise ExportError("Nothing to check against: pass --comfyui DIR (a ComfyUI checkout) and/or --taehv DIR.")
    results = run_checks(args.comfyui, args.taehv, args.model, args.student, args.dtype)
    for loader, rows in results.items():
        if rows:
            print(f"{loader}:\n{format_results(rows)}")
