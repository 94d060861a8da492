"""Publish a student on the Hugging Face Hub (diffusers files, TAESD pair, model card).

The same as `tinyae push`: see `tinyae push --help` (tinyae/cli/push.py).
"""

import sys

from tinyae.cli import main

if __name__ == "__main__":
    main(["push", *sys.argv[1:]])
