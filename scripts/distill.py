"""Distill a tiny autoencoder from a frozen VAE.

The same as `tinyae distill`: see `tinyae distill --help` (tinyae/cli/distill.py).
"""

import sys

from tinyae.cli import main

if __name__ == "__main__":
    main(["distill", *sys.argv[1:]])
