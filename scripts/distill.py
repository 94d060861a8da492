"""Distill a tiny autoencoder from a frozen VAE.

    accelerate launch scripts/distill.py --teacher sdxl --data DIR --output runs/sdxl
    python scripts/distill.py --recipe smoke --output runs/smoke        # offline, CPU, a few minutes

Any recipe field can be overridden as --section.field value (e.g. --train.steps 2000).
"""

import argparse

from tinyae.cli import run
from tinyae.config import choose_recipe, load_recipe
from tinyae.train import distill


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", help="recipe name in recipes/ or a .yaml path (default: the teacher's)")
    args, overrides = parser.parse_known_args(argv)
    recipe = load_recipe(choose_recipe(args.recipe, overrides), overrides)
    distill(recipe)


if __name__ == "__main__":
    run(main)
