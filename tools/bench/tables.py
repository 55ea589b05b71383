"""Plain-text and markdown tables the benchmarks print and write."""

from __future__ import annotations

from collections.abc import Container


def render_text(body: list[list[str]], left: Container[int] | None = None) -> str:
    """``body[0]`` is the header; columns in ``left`` (all when None) are left-aligned, the rest right."""
    widths = [max(len(row[i]) for row in body) for i in range(len(body[0]))]
    lines = ["  ".join(cell.ljust(width) if left is None or i in left else cell.rjust(width)
                       for i, (cell, width) in enumerate(zip(row, widths, strict=True))) for row in body]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def render_markdown(body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(body[0]) + " |", "|" + "---|" * len(body[0])]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in body[1:]]
    return "\n".join(lines) + "\n"
