"""Export a trained student for diffusers, ComfyUI / Forge, or both.

The same as `tinyae export`: see `tinyae export --help` (tinyae/cli/export.py).
"""

import sys

from tinyae.cli import main

if __name__ == "__main__":
    main(["export", *sys.argv[1:]])
