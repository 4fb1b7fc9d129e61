"""Rewrite a marked block of a doc: the text between ``<!-- name:begin -->`` and ``<!-- name:end -->``.

Every bench tool that writes its table into docs/ goes through :func:`write_block`.
"""
from __future__ import annotations

import re
from pathlib import Path

from bench import REPO
from refseg.io import atomic_write_text

PERFORMANCE = REPO / "docs" / "performance.md"


def write_block(doc: Path, name: str, markdown: str, append: bool = False) -> Path:
    """Replace block ``name`` of ``doc`` with ``markdown``, atomically. Without the markers the block
    is appended when ``append``, else nothing is written and the tool stops with a one-line message."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = doc.read_text(encoding="utf-8") if doc.exists() else ""
    block = f"{begin}\n{markdown.rstrip(chr(10))}\n{end}"
    if begin in text and end in text:
        text = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S).sub(lambda _: block, text, count=1)
    elif append:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        raise SystemExit(f"{doc} has no {begin} ... {end} markers")
    atomic_write_text(doc, text)
    return doc


def command_line(tool: str, argv: list[str]) -> str:
    """How a table was made, quoted with it: ``python -m bench.<tool> ARGS``."""
    return " ".join(["python", "-m", f"bench.{tool}", *argv])
