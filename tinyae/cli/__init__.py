"""The `tinyae` command: one subcommand per task, each a module of this package.

    tinyae distill --recipe smoke --output runs/smoke
    tinyae evaluate --student runs/smoke/student --teacher tiny --data DIR

`scripts/<name>.py` runs the same entry point (`python scripts/distill.py ...` is
`tinyae distill ...`). A user error is one sentence on stderr and exit code 2, never a
traceback; logging is configured here, in the entry point, and nowhere in the library.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from types import ModuleType

from tinyae.errors import TinyaeError

# name -> (module, one line of help). A module has add_arguments(parser) and run(args, overrides); OVERRIDES = True
# takes recipe flags, and such a module's recipe(args, overrides) builds (and so checks) the recipe they apply to.
# Only the module of the command that runs is imported: `tinyae --help` prints without loading torch.
COMMANDS: dict[str, tuple[str, str]] = {
    # what users run
    "distill": ("tinyae.cli.distill", "train a student from a teacher VAE (recipe + --section.field overrides)"),
    "plan": ("tinyae.cli.plan", "memory and time of each phase of a run on a GPU, before it starts (recipe + "
                                "--section.field overrides)"),
    "doctor": ("tinyae.cli.doctor", "a few real training steps of each phase on the GPU(s) present: speed, memory, "
                                    "precision, compile, resume"),
    "evaluate": ("tinyae.cli.evaluate", "PSNR/SSIM/MS-SSIM/LPIPS of a student against its teacher on an image folder "
                                        "(or video clips)"),
    "export": ("tinyae.cli.export", "write a student as an AutoencoderTiny/TinyAutoencoder folder, a TAESD pair "
                                    "(ComfyUI, Forge) and/or ONNX"),
    "push": ("tinyae.cli.push", "build the Hub upload folder (model card, diffusers files, TAESD pair) and upload it"),
    "cache-latents": ("tinyae.cli.cache_latents", "build (or resume) a teacher latent cache for a recipe's crops"),
    "inspect-vae": ("tinyae.cli.inspect_vae", "recommended scaling/shift (or per-channel) factors, posterior, "
                                              "outliers and locality of a VAE's latents"),
    "lpips": ("tinyae.cli.lpips", "prefetch the real LPIPS backbones and self-check them"),
    "bench": ("tinyae.cli.bench", "encode/decode latency and peak memory of a student against teachers, in one run"),
    "bench-train": ("tinyae.cli.bench_train", "training throughput with the teacher on the fly against the teacher "
                                              "cache"),
    "bench-video": ("tinyae.cli.bench_video", "video decode time and peak memory of a TAEHV-layout student against "
                                              "the full video VAE"),
    # the lab: how the project's own figures, teachers and client checks were made
    "study": ("tinyae.cli.study", "train and compare the arms of the recipe study, write docs/quality.md"),
    "train-teacher": ("tinyae.cli.train_teacher", "train the small offline AutoencoderKL teacher (how "
                                                  "weights/tiny-teacher was made)"),
    "derive-teacher": ("tinyae.cli.derive_teacher", "derive a 'fine-tuned VAE' teacher from a published TAE "
                                                    "(latent transform + decoder fine-tune)"),
    "check-comfyui-taehv": ("tinyae.cli.check_comfyui_taehv", "load TAEHV exports with ComfyUI's (and taehv.py's) "
                                                              "own code and compare their frames with tinyae's"),
}


def command_module(name: str) -> ModuleType:
    return importlib.import_module(COMMANDS[name][0])


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `tinyae` parser; only `command`'s subparser gets its arguments (the others list their help line)."""
    parser = argparse.ArgumentParser(prog="tinyae", description=__doc__.split("\n\n")[0])
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_line) in COMMANDS.items():
        if name != command:
            subcommands.add_parser(name, help=help_line)
            continue
        module = command_module(name)
        sub = subcommands.add_parser(name, help=help_line, description=module.__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(module=module, parser=sub)
    return parser


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """A command line's arguments and its recipe overrides, without running it (the docs' commands are tested so).

    A bad argument exits with argparse's usage message and code 2, as on the command line.
    """
    command = argv[0] if argv and argv[0] in COMMANDS else None
    args, extra = build_parser(command).parse_known_args(argv)
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
