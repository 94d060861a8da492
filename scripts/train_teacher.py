"""Train the small AutoencoderKL teacher that tinyae ships for offline runs (weights/tiny-teacher).

The same as `tinyae train-teacher`: see `tinyae train-teacher --help` (tinyae/cli/train_teacher.py).
"""

import sys

from tinyae.cli import main

if __name__ == "__main__":
    main(["train-teacher", *sys.argv[1:]])
