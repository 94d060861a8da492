"""The quality study of the recipe's parts (docs/quality.md).

The same as `tinyae study`: see `tinyae study --help` (tinyae/cli/study.py).
"""

import sys

from tinyae.cli import main

if __name__ == "__main__":
    main(["study", *sys.argv[1:]])
