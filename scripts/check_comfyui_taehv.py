"""Check that ComfyUI's own loader (and, optionally, upstream taehv.py) reads tinyae's TAEHV exports and decodes
the same frames as tinyae.

    python scripts/check_comfyui_taehv.py --comfyui /path/to/ComfyUI [--taehv /path/to/taehv] \
        [--model taew2_1 taew2_2 taehv] [--student runs/wan/student] [--dtype fp32]

The checkouts are used unmodified; ComfyUI needs its requirements.txt installed. Without --student each
model is checked with a seeded random student of its layout. The logic is tinyae.shipping.taehv_check.
"""

import argparse
import sys

from tinyae.errors import TinyaeError
from tinyae.shipping.taehv_check import format_results, run_checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", help="a ComfyUI checkout")
    parser.add_argument("--taehv", help="a madebyollin/taehv checkout (its taehv.py)")
    parser.add_argument("--model", nargs="+", default=["taew2_1", "taew2_2", "taehv"])
    parser.add_argument("--student", help="a VideoStudent folder or TAEHV file (default: seeded random weights)")
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32")
    args = parser.parse_args()
    if not args.comfyui and not args.taehv:
        parser.error("pass --comfyui and/or --taehv")
    try:
        results = run_checks(args.comfyui, args.taehv, args.model, args.student, args.dtype)
    except TinyaeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    for loader, rows in results.items():
        if rows:
            print(f"{loader}:\n{format_results(rows)}")


if __name__ == "__main__":
    main()
