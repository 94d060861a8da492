"""Latency and peak memory of a student against its teacher(s), in one run.

The same as `tinyae bench`: see `tinyae bench --help` (tinyae/cli/bench.py).
"""

import sys

from tinyae.cli import main

if __name__ == "__main__":
    main(["bench", *sys.argv[1:]])
