"""Encode training crops once with the teacher, so training reads latents from disk instead of running it.

The same as `tinyae cache-latents`: see `tinyae cache-latents --help` (tinyae/cli/cache_latents.py).
"""

import sys

from tinyae.cli import main

if __name__ == "__main__":
    main(["cache-latents", *sys.argv[1:]])
