"""Derive a "fine-tuned VAE" teacher from a published TAE. The same as `tinyae derive-teacher` (see its --help)."""

import sys

from tinyae.cli import main

if __name__ == "__main__":
    main(["derive-teacher", *sys.argv[1:]])
