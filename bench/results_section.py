"""Sections of bench/results.md written by other benchmarks than bench/run.py.

Each lives between `<!-- NAME:start -->` and `<!-- NAME:end -->`; a rerun replaces its own
section, and bench/run.py carries every section over when it rewrites the file.
"""

from __future__ import annotations

import re
from pathlib import Path

_SECTION = re.compile(r"<!-- (?P<name>[a-z-]+):start -->\n.*?<!-- (?P=name):end -->\n", re.S)


def sections(text: str) -> list[str]:
    """The marked sections of a results file, in order, markers included."""
    return [m.group(0) for m in _SECTION.finditer(text)]


def write_section(path: Path, name: str, body: str) -> None:
    """Put ``body`` in section ``name`` of ``path``: in place when it exists, else at the end."""
    block = f"<!-- {name}:start -->\n{body.rstrip()}\n<!-- {name}:end -->\n"
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(rf"<!-- {name}:start -->\n.*?<!-- {name}:end -->\n", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)
