"""Measure a student against its teacher on a folder of images.

The same as `tinyae evaluate`: see `tinyae evaluate --help` (tinyae/cli/evaluate.py).
"""

import sys

from tinyae.cli import main

if __name__ == "__main__":
    main(["evaluate", *sys.argv[1:]])
