"""Memory and time of each phase of a run on a GPU, before it starts.

The same as `tinyae plan`: see `tinyae plan --help` (tinyae/cli/plan.py).
"""

import sys

from tinyae.cli import main

if __name__ == "__main__":
    main(["plan", *sys.argv[1:]])
