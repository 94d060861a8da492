"""A few real training steps of each phase on the GPU(s) present: speed, memory, precision, compile, resume.

The same as `tinyae doctor`: see `tinyae doctor --help` (tinyae/cli/doctor.py).
"""

import sys

from tinyae.cli import main

if __name__ == "__main__":
    main(["doctor", *sys.argv[1:]])
