"""Fetch and convert the pretrained LPIPS backbones once, and check them against known distances.

    tinyae lpips              # both nets; prints where each came from and a self-check value

LPIPS is used for training and evaluation with a real pretrained backbone, never a random one;
this builds the cache (~66 MB) that first use would otherwise build.
"""

from __future__ import annotations

import argparse
import sys

from tinyae.evaluation.lpips import NETS, self_check


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--net", choices=[*NETS, "all"], default="all")


def run(args: argparse.Namespace, overrides: list[str]) -> None:
    failed = []
    for net in NETS if args.net == "all" else (args.net,):
        check = self_check(net)
        size = f" ({check['cache_mb']:.1f} MB)" if check["cache_mb"] else ""
        print(f"lpips[{net}] from {check['source']}{size}, loaded in {check['seconds']:.1f}s")
        print(f"  self-check astronaut vs 4x-blurred: {check['value']:.4f} (expected {check['expected']:.4f}), "
              f"identical: {check['identical']:.4f} -> {'OK' if check['ok'] else 'MISMATCH'}")
        if not check["ok"]:
            failed.append(net)
    if failed:
        print(f"error: the LPIPS self-check failed for {', '.join(failed)}.", file=sys.stderr)
        sys.exit(1)

