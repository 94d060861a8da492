"""Video decode time, peak memory and MACs of a TAEHV-layout student against the full video VAE.

The same as `tinyae bench-video`: see `tinyae bench-video --help` (tinyae/cli/bench_video.py).
"""

import sys

from tinyae.cli import main

if __name__ == "__main__":
    main(["bench-video", *sys.argv[1:]])
