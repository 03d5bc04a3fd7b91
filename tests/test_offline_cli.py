"""`edgeroute queue stats|list|purge` on a real data dir (click CliRunner, no processes)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from edge_node.queue_store import DurableQueue, QueuedItem
from edge_node.result_store import ResultStore
from edgeroute.cli_queue import queue
from router.policy import QueueSettings


def _item(rid: str) -> QueuedItem:
    return QueuedItem(
        request_id=rid,
        task="digits",
        cloud_task="digits",
        inputs=[0.5] * 64,
        candidates=["1", "7"],
        edge_label="1",
        edge_score=0.4,
        edge_candidates=[("1", 0.4), ("7", 0.3)],
        model_version="e1",
        enqueued_at=1000.0,
        reason="cloud_unreachable",
    )


def _data_dir(tmp_path: Path) -> Path:
    q = DurableQueue(
        tmp_path / "queue", QueueSettings(max_items=100, max_bytes=1 << 20, on_full="reject")
    )
    for rid in ("p1", "p2", "p3"):
        q.put(_item(rid))
    rs = ResultStore(tmp_path / "results")
    rs.put_failed("d1", "unknown_task: task 'x' is not served here")
    rs.put_expired("e1", "queue_full")
    rs.put_expired("e2", "ttl_expired")
    q.close()
    rs.close()
    return tmp_path


def test_stats_counts_every_state(tmp_path: Path) -> None:
    """stats --json reports depth, bytes and results per state."""
    out = CliRunner().invoke(queue, ["stats", "--data-dir", str(_data_dir(tmp_path)), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["depth"] == 3 and data["bytes"] > 0
    assert data["results"]["failed"] == 1 and data["results"]["expired"] == 2


def test_list_dead_expired_pending(tmp_path: Path) -> None:
    """list --state dead|expired|pending prints one JSON line per item, never inputs."""
    d = str(_data_dir(tmp_path))
    runner = CliRunner()
    dead = [
        json.loads(x)
        for x in runner.invoke(
            queue, ["list", "--data-dir", d, "--state", "dead"]
        ).output.splitlines()
    ]
    assert [r["request_id"] for r in dead] == ["d1"] and "unknown_task" in dead[0]["error"]
    exp = runner.invoke(queue, ["list", "--data-dir", d, "--state", "expired"]).output
    assert {json.loads(x)["reason"] for x in exp.splitlines()} == {"queue_full", "ttl_expired"}
    pend = runner.invoke(queue, ["list", "--data-dir", d, "--state", "pending"]).output
    assert [json.loads(x)["request_id"] for x in pend.splitlines()] == ["p1", "p2", "p3"]
    assert "inputs" not in pend


def test_purge_asks_then_expires(tmp_path: Path) -> None:
    """purge without --yes asks (and aborts on no); with yes, items become expired/purged."""
    d = str(_data_dir(tmp_path))
    runner = CliRunner()
    no = runner.invoke(queue, ["purge", "--data-dir", d], input="n\n")
    assert no.exit_code != 0
    assert (
        json.loads(runner.invoke(queue, ["stats", "--data-dir", d, "--json"]).output)["depth"] == 3
    )
    yes = runner.invoke(queue, ["purge", "--data-dir", d], input="y\n")
    assert yes.exit_code == 0 and "purged 3" in yes.output
    data = json.loads(runner.invoke(queue, ["stats", "--data-dir", d, "--json"]).output)
    assert data["depth"] == 0 and data["results"]["expired"] == 5
