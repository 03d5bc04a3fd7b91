"""`edgeroute demo` end to end: the figures issue 2 asks the demo to show."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from edgeroute import processes

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_demo_uses_every_route_loses_nothing_and_is_accurate(
    demo_bundles_dir: Path, tmp_path: Path
) -> None:
    """The demo uses all three routes, loses nothing, and is within 1 point of cloud-only
    accuracy while escalating or queueing at most 35% of requests."""
    report = tmp_path / "report.json"
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        processes.edgeroute_cmd(
            "demo",
            "--models",
            str(demo_bundles_dir),
            "--data-dir",
            str(tmp_path / "data"),
            "--report",
            str(report),
            "--policy",
            str(repo / "policies" / "default.yaml"),
        ),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(report.read_text())
    assert set(r["routes"]) >= {"edge", "cloud", "queued"}, r["routes"]
    assert r["lost"] == 0 and r["queued"] == r["synced"] > 0
    assert r["accuracy"]["final"] >= r["accuracy"]["cloud_only"] - 0.01, r["accuracy"]
    assert r["escalation_rate"] <= 0.35
    assert "route / reason" in proc.stdout and "lost 0" in proc.stdout
    decisions = tmp_path / "data" / "edge" / "decisions" / "decisions.jsonl"
    kinds = [json.loads(line)["kind"] for line in decisions.read_text().splitlines()]
    assert kinds.count("decision") == r["requests"]  # one record per request
    assert kinds.count("sync") == r["synced"]  # and one per queued item the cloud answered
