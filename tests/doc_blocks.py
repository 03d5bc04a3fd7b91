"""The runnable parts of a markdown page, in order, so tests run the docs instead of copies.

A fenced ```sh block is a list of commands (one per line, `\\` continuations joined,
comments dropped); a fenced block right after an HTML comment `<!-- file: NAME -->` is a
file to write under NAME. Other blocks are prose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_FENCE = re.compile(r"^```(\w*)\s*$")
_FILE = re.compile(r"^<!--\s*file:\s*(\S+)\s*-->\s*$")


@dataclass(frozen=True)
class Step:
    """One runnable step: `kind` "sh" (`text` is one command) or "file" (`name`, `text`)."""

    kind: str
    text: str
    name: str = ""


def steps(page: Path) -> list[Step]:
    """Every runnable step of `page`, in reading order."""
    out: list[Step] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    file_name = ""
    i = 0
    while i < len(lines):
        named = _FILE.match(lines[i])
        if named:
            file_name = named.group(1)
            i += 1
            continue
        fence = _FENCE.match(lines[i])
        if not fence:
            if lines[i].strip():
                file_name = ""
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        body = lines[i + 1 : end]
        if file_name:
            out.append(Step("file", "\n".join(body) + "\n", file_name))
        elif fence.group(1) == "sh":
            out += [Step("sh", cmd) for cmd in _commands(body)]
        file_name = ""
        i = end + 1
    return out


def _commands(body: list[str]) -> list[str]:
    joined = "\n".join(body).replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        cmd = line.split(" #")[0].strip() if not line.lstrip().startswith("#") else ""
        if cmd:
            out.append(cmd)
    return out
