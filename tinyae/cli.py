"""What every script shares: a user error is one sentence on stderr and exit code 2, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tinyae.errors import TinyaeError


def run(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    try:
        main(argv)
    except TinyaeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished checkpoints and exports are intact.", file=sys.stderr)
        sys.exit(130)
