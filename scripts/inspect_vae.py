"""Inspect a VAE's latent space before distilling it: scale/shift factors, posterior, recurring outliers, locality.

The same as `tinyae inspect-vae`: see `tinyae inspect-vae --help` (tinyae/cli/inspect_vae.py).
"""

import sys

from tinyae.cli import main

if __name__ == "__main__":
    main(["inspect-vae", *sys.argv[1:]])
