"""The operator commands the README and docs/offline.md show exist as written: every
`edgeroute queue|edge ...` line of their sh blocks names a real command and real options,
and every `--state` the docs list is accepted (extracted from the pages, not copied)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeroute.cli import main

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", REPO / "docs" / "offline.md"]
_BLOCK = re.compile(r"```sh\n(.*?)```", re.S)


def _doc_lines() -> list[tuple[str, str]]:
    """(page, command line) of every `edgeroute queue|edge` line in the pages' sh blocks."""
    out: list[tuple[str, str]] = []
    for page in PAGES:
        for block in _BLOCK.findall(page.read_text(encoding="utf-8")):
            for line in block.splitlines():
                code = line.split("#", 1)[0].strip()
                if re.match(r"edgeroute (queue|edge) \w", code):
                    out.append((page.name, code))
    return out


LINES = _doc_lines()


def test_the_pages_show_queue_commands() -> None:
    """The extraction finds the queue commands (so the checks below check something)."""
    assert {line.split()[2] for _, line in LINES} >= {"stats", "list", "drain", "purge"}


@pytest.mark.parametrize(("page", "line"), LINES, ids=[f"{p}:{line[:40]}" for p, line in LINES])
def test_documented_command_and_options_exist(page: str, line: str) -> None:
    """Each documented command's --help runs and lists every option the line uses."""
    words = line.split()
    result = CliRunner().invoke(main, [*words[1:3], "--help"])
    assert result.exit_code == 0, result.output
    for option in re.findall(r"(--[a-z][a-z-]*)", line):
        assert option in result.output, f"{page}: {line}: {option} not in --help"


def test_every_documented_state_is_listed(tmp_path: Path) -> None:
    """Each `--state a|b|c` value the pages show runs `queue list` on an empty data dir."""
    states = {
        s
        for _, line in LINES
        for group in re.findall(r"--state ([a-z|]+)", line)
        for s in group.split("|")
    }
    assert "quarantined" in states
    (tmp_path / "queue").mkdir()
    for state in sorted(states):
        result = CliRunner().invoke(
            main, ["queue", "list", "--data-dir", str(tmp_path), "--state", state]
        )
        assert result.exit_code == 0, (state, result.output)
