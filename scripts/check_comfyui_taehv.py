"""Load TAEHV exports with ComfyUI's (and taehv.py's) own code and compare their frames with tinyae's.

The same as `tinyae check-comfyui-taehv`: see `tinyae check-comfyui-taehv --help`
(tinyae/cli/check_comfyui_taehv.py; the logic is tinyae.shipping.taehv_check).

    python scripts/check_comfyui_taehv.py --comfyui /path/to/ComfyUI --taehv /path/to/taehv
"""

import sys

from tinyae.cli import main

if __name__ == "__main__":
    main(["check-comfyui-taehv", *sys.argv[1:]])
