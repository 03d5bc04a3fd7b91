"""edge_node.gc_tuning: the collector settings of a node process (checked in a fresh one)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_tune_gc_freezes_startup_objects_and_raises_the_young_threshold() -> None:
    """tune_gc (run in a fresh process: it is process-wide) freezes what survived startup
    and collects the youngest generation every 10,000 allocations, older ones unchanged."""
    code = (
        "import gc; before = gc.get_threshold()\n"
        "from edge_node.gc_tuning import tune_gc; tune_gc()\n"
        "print(gc.get_freeze_count() > 0, gc.get_threshold() == (10_000, *before[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=60,
    )
    assert proc.stdout.decode().split() == ["True", "True"], proc.stderr.decode()[-2000:]
