"""The `tinyae` command: one subcommand per task, each a module of this package.

    tinyae distill --recipe smoke --output runs/smoke
    tinyae evaluate --student runs/smoke/student --teacher tiny --data DIR

`scripts/<name>.py` runs the same entry point (`python scripts/distill.py ...` is
`tinyae distill ...`). A user error is one sentence on stderr and exit code 2, never a
traceback; logging is configured here, in the entry point, and nowhere in the library.
"""

from __future__ import annotations

import argparse
import logging
import sys

from tinyae.cli import (
    bench,
    bench_train,
    bench_video,
    cache_latents,
    check_comfyui_taehv,
    derive_teacher,
    distill,
    doctor,
    evaluate,
    export,
    inspect_vae,
    lpips,
    plan,
    push,
    study,
    train_teacher,
)
from tinyae.errors import TinyaeError

# name -> module with HELP, add_arguments(parser) and run(args, overrides); OVERRIDES = True takes recipe flags,
# and such a module's recipe(args, overrides) builds (and so checks) the recipe they apply to.
COMMANDS = {
    "distill": distill, "evaluate": evaluate, "bench": bench, "export": export, "push": push,
    "inspect-vae": inspect_vae, "cache-latents": cache_latents, "bench-train": bench_train,
    "train-teacher": train_teacher, "lpips": lpips, "study": study, "bench-video": bench_video,
    "check-comfyui-taehv": check_comfyui_taehv, "derive-teacher": derive_teacher, "plan": plan, "doctor": doctor,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinyae", description=__doc__.split("\n\n")[0])
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        sub = subcommands.add_parser(name, help=module.HELP, description=module.__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(module=module, parser=sub)
    return parser


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """A command line's arguments and its recipe overrides, without running it (the docs' commands are tested so).

    A bad argument exits with argparse's usage message and code 2, as on the command line.
    """
    args, extra = build_parser().parse_known_args(argv)
    args.argv = list(argv)
    if extra and not getattr(args.module, "OVERRIDES", False):
        args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args, extra


def main(argv: list[str] | None = None) -> None:
    """Parse `argv` (default: the command line), run the subcommand, turn user errors into one sentence."""
    args, extra = parse(sys.argv[1:] if argv is None else list(argv))
    module = args.module
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        module.run(args, extra)
    except TinyaeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished checkpoints and exports are intact.", file=sys.stderr)
        sys.exit(130)
