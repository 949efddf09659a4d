"""Blocks of README.md that a benchmark writes: what stands between `<!-- NAME:start -->` and
`<!-- NAME:end -->` is its output, replaced whole at each run (never edited by hand)."""

from __future__ import annotations

from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    """The start and end markers of block `name`."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_block(text: str, name: str, block: str) -> str:
    """text with what stands between block `name`'s markers replaced by block."""
    start_mark, end_mark = markers(name)
    start, end = text.find(start_mark), text.find(end_mark)
    if start < 0 or end < start:
        raise ValueError(f"no {start_mark} ... {end_mark} block")
    return f"{text[: start + len(start_mark)]}\n{block.strip()}\n{text[end:]}"


def rewrite(readme: Path, name: str, block: str) -> None:
    """Replace block `name` of the README file (ValueError if it has none)."""
    readme.write_text(replace_block(readme.read_text(), name, block))
