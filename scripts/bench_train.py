"""Training images/s with the teacher on the fly vs. from the teacher cache, in one run.

The same as `tinyae bench-train`: see `tinyae bench-train --help` (tinyae/cli/bench_train.py).
"""

import sys

from tinyae.cli import main

if __name__ == "__main__":
    main(["bench-train", *sys.argv[1:]])
