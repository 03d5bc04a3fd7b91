"""The imports shown in the docs' Python examples resolve, so a renamed or moved name
breaks a test instead of a reader's first try."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^\s*```python\s*\n(.*?)^\s*```", re.DOTALL | re.MULTILINE)


def _imports(page: Path) -> list[tuple[str, str | None]]:
    """(module, name or None) for each import statement at the top of a python block."""
    found: list[tuple[str, str | None]] = []
    for block in _BLOCK.findall(page.read_text(encoding="utf-8")):
        lines = [ln.strip() for ln in block.splitlines()]
        heads = [ln for ln in lines if ln.startswith(("import ", "from "))]
        for node in ast.parse("\n".join(heads)).body:
            if isinstance(node, ast.ImportFrom) and node.module:
                found += [(node.module, alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):
                found += [(alias.name, None) for alias in node.names]
    return found


CASES = [(page.name, mod, name) for page in PAGES for mod, name in _imports(page)]


def test_the_docs_show_python_imports() -> None:
    """The scan finds the client page's imports (so the check below is not vacuous)."""
    assert ("client.md", "edgeroute.client", "EdgeUnavailable") in CASES


@pytest.mark.parametrize(("page", "module", "name"), CASES)
def test_an_import_shown_in_the_docs_resolves(page: str, module: str, name: str | None) -> None:
    """`from module import name` as printed in the page works in this checkout."""
    mod = importlib.import_module(module)
    assert name is None or hasattr(mod, name), f"{page}: {module} has no {name}"
