"""Must-show: calibrate on a real edge node's decision log, deploy the threshold, and the
node's actual escalation rate on the digits test split is within 2 points of the estimate."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from edgeroute.cli_policy import policy
from edgeroute.netproxy import ThreadedFaultProxy
from tests.edge_fixtures import EdgeNode, policy_text
from tests.waiting import wait_until

pytestmark = pytest.mark.ray


async def _replay(url: str, x: np.ndarray, prefix: str) -> list[dict[str, object]]:
    sem = asyncio.Semaphore(8)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one(i: int) -> dict[str, object]:
            async with sem:
                body = {"task": "digits", "inputs": x[i].tolist(), "request_id": f"{prefix}-{i}"}
                r = await client.post("/v1/infer", json=body)
                assert r.status_code == 200, r.text
                data: dict[str, object] = r.json()
                return data

        return list(await asyncio.gather(*(one(i) for i in range(len(x)))))


def _log_lines(node: EdgeNode) -> int:
    path = node.data_dir / "decisions" / "decisions.jsonl"
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def test_calibrated_threshold_escalates_as_predicted(
    start_edge: Callable[..., EdgeNode],
    proxy: ThreadedFaultProxy,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    """Replay the split at threshold 0.7, calibrate to 20% escalation (threshold, plot,
    policy file), reload the node with it, replay again: actual rate within 2 points."""
    x, y = digits_split
    node = start_edge(
        policy_text(demo_bundles_dir / "edge" / "digits", threshold=0.7),
        f"http://127.0.0.1:{proxy.port}",
    )
    first = asyncio.run(_replay(node.url, x, "cal"))
    assert any(d["route"] == "cloud" for d in first)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({f"cal-{i}": str(int(v)) for i, v in enumerate(y)}))
    wait_until(lambda: _log_lines(node) >= len(x), 10, 0.1, f"{len(x)} decision log lines")
    assert _log_lines(node) == len(x)

    new_policy, plot, report = tmp_path / "new.yaml", tmp_path / "cal.png", tmp_path / "r.json"
    out = CliRunner().invoke(
        policy,
        [
            "calibrate",
            "--policy",
            str(node.policy_path),
            "--log",
            str(node.data_dir / "decisions"),
            "--labels",
            str(labels),
            "--target-escalation",
            "0.2",
            "--plot",
            str(plot),
            "--write-policy",
            str(new_policy),
            "--report",
            str(report),
        ],
    )
    assert out.exit_code == 0, out.output
    choice = json.loads(report.read_text())["digits"]
    assert 0.0 < choice["threshold"] < 0.7
    assert 0.18 <= choice["escalation"] <= 0.2
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    node.policy_path.write_text(new_policy.read_text())
    r = httpx.post(f"{node.url}/v1/policy/reload", timeout=30)
    assert r.json()["result"] == "applied", r.text
    second = asyncio.run(_replay(node.url, x, "after"))
    actual = sum(d["route"] == "cloud" or not d["final"] for d in second) / len(second)
    assert abs(actual - choice["escalation"]) <= 0.02, (actual, choice)
