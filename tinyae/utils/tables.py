"""Markdown tables and number cells, so every report formats numbers the same way."""

from __future__ import annotations

import math


def fmt(value: float | None, spec: str = ".3g") -> str:
    """A table cell: 'n/a' for missing or NaN, 'inf' for infinities, else `format(value, spec)`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, spec)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table padded to line up, so the same text reads well in a terminal."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])
