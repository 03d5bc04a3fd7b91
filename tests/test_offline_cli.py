"""`edgeroute queue stats|list|purge|drain` on a real data dir (click CliRunner); drain
against the session's real cloud; drain/purge refused while another process holds the
data dir's writer lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_node.observe.decision_log import read_decision_log
from edge_node.storage.budget_store import BudgetStore
from edge_node.storage.queue_store import DurableQueue
from edge_node.storage.queued_item import QueuedItem
from edge_node.storage.result_store import ResultStore
from edgeroute import processes
from edgeroute.cli_queue import queue
from router.policy import CostSettings, QueueSettings
from tests.edge_fixtures import CLOUD_TOKEN
from tests.offline_support import offline_policy

REPO = Path(__file__).resolve().parents[1]


def _item(rid: str, inputs: list[float] | None = None, at: float = 1000.0) -> QueuedItem:
    return QueuedItem(
        request_id=rid,
        task="digits",
        cloud_task="digits",
        inputs=inputs if inputs is not None else [0.5] * 64,
        candidates=["1", "7"],
        edge_label="1",
        edge_score=0.4,
        edge_candidates=[("1", 0.4), ("7", 0.3)],
        model_version="e1",
        enqueued_at=at,
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


def test_purge_without_confirmation_changes_nothing(tmp_path: Path) -> None:
    """purge with no answer at all (stdin closed) aborts like a "no"; --yes never asks."""
    d = str(_data_dir(tmp_path))
    runner = CliRunner()
    silent = runner.invoke(queue, ["purge", "--data-dir", d], input="")
    assert silent.exit_code == 1 and "Aborted" in silent.output
    assert (
        json.loads(runner.invoke(queue, ["stats", "--data-dir", d, "--json"]).output)["depth"] == 3
    )
    forced = runner.invoke(queue, ["purge", "--data-dir", d, "--yes"], input="")
    assert forced.exit_code == 0 and "?" not in forced.output and "purged 3" in forced.output


@pytest.mark.ray
def test_drain_syncs_every_item_to_the_real_cloud(
    tmp_path: Path,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
    cloud_url: str,
) -> None:
    """queue drain --cloud-url against the session cloud: every queued item ends `done`
    with the cloud model's answer and the queue is empty."""
    x, _ = digits_split
    run = uuid.uuid4().hex[:8]
    ids = [f"cli-drain-{run}-{i}" for i in range(150)]
    q = DurableQueue(
        tmp_path / "queue", QueueSettings(max_items=1000, max_bytes=1 << 24, on_full="reject")
    )
    for i, rid in enumerate(ids):
        q.put(_item(rid, x[i % len(x)].tolist(), at=time.time()))
    q.close()
    policy = tmp_path / "policy.yaml"
    policy.write_text(offline_policy(demo_bundles_dir / "edge" / "digits"))

    out = CliRunner().invoke(
        queue,
        ["drain", "--data-dir", str(tmp_path), "--policy", str(policy), "--cloud-url", cloud_url],
        env={"EDGEROUTE_TEST_TOKEN": CLOUD_TOKEN},
    )
    assert out.exit_code == 0, out.output
    assert "queue drained" in out.output
    rs = ResultStore(tmp_path / "results")
    records = {rid: rs.get(rid) or {} for rid in ids}
    rs.close()
    assert {r.get("status") for r in records.values()} == {"done"}
    assert all(
        str(r["result"]["model_version"]).startswith("digits-cloud") for r in records.values()
    )
    stats = CliRunner().invoke(queue, ["stats", "--data-dir", str(tmp_path), "--json"])
    assert json.loads(stats.output)["depth"] == 0
    synced = [r for r in read_decision_log(tmp_path / "decisions") if r.kind == "sync"]
    assert sorted(r.request_id for r in synced) == sorted(ids)
    assert all(r.cloud_label == records[r.request_id]["result"]["label"] for r in synced)


@pytest.mark.ray
def test_drain_charges_the_budget_and_stops_when_it_is_spent(
    tmp_path: Path,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
    cloud_url: str,
) -> None:
    """queue drain charges each synced item to the node's budget ledger and stops, saying
    why, once the policy's call budget is spent; the rest stays queued."""
    x, _ = digits_split
    run = uuid.uuid4().hex[:8]
    ids = [f"cli-budget-{run}-{i}" for i in range(100)]
    q = DurableQueue(
        tmp_path / "queue", QueueSettings(max_items=1000, max_bytes=1 << 24, on_full="reject")
    )
    for i, rid in enumerate(ids):
        q.put(_item(rid, x[i % len(x)].tolist(), at=time.time() + i / 1000))
    q.close()
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        offline_policy(
            demo_bundles_dir / "edge" / "digits", cost="price_per_call: 0.01\n  daily_calls: 40"
        )
    )

    out = CliRunner().invoke(
        queue,
        ["drain", "--data-dir", str(tmp_path), "--policy", str(policy), "--cloud-url", cloud_url],
        env={"EDGEROUTE_TEST_TOKEN": CLOUD_TOKEN},
    )
    assert out.exit_code == 1, out.output
    assert "budget is exhausted" in out.output and "60 items still queued" in out.output
    budget = BudgetStore(tmp_path / "budget", CostSettings(), clock=time.time)
    assert budget.snapshot().calls == 40
    budget.close()
    rs = ResultStore(tmp_path / "results")
    done = [rid for rid in ids if (rs.get(rid) or {}).get("status") == "done"]
    rs.close()
    assert done == ids[:40]  # oldest first


_HOLD_LOCK = textwrap.dedent(
    """
    import sys
    from edge_node.storage.data_dir_lock import hold
    hold(sys.argv[1], "edge node")
    print("held", flush=True)
    sys.stdin.read()  # hold it until the test kills this process (or its stdin closes)
    """
)


@pytest.fixture
def locked_data_dir(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A data dir with 3 queued items whose writer lock another process holds (as a
    running node does); (dir, holder pid). The holder is killed at teardown."""
    data = _data_dir(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(data)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield data, proc.pid
    finally:
        proc.kill()
        proc.wait(10)


def test_drain_and_purge_refuse_while_the_data_dir_is_in_use(
    locked_data_dir: tuple[Path, int], demo_bundles_dir: Path
) -> None:
    """With the data dir locked by another process, drain and purge exit 2 naming it and
    touch nothing; stats still reads."""
    data, pid = locked_data_dir
    policy = data / "policy.yaml"
    policy.write_text(offline_policy(demo_bundles_dir / "edge" / "digits"))
    dead_cloud = f"http://127.0.0.1:{processes.free_port()}"
    runner = CliRunner()
    drain = runner.invoke(
        queue,
        ["drain", "--data-dir", str(data), "--policy", str(policy), "--cloud-url", dead_cloud],
    )
    purge = runner.invoke(queue, ["purge", "--data-dir", str(data), "--yes"])
    for res in (drain, purge):
        assert res.exit_code == 2, res.output
        assert f"in use by edge node (pid {pid})" in res.output
    stats = runner.invoke(queue, ["stats", "--data-dir", str(data), "--json"])
    assert stats.exit_code == 0 and json.loads(stats.output)["depth"] == 3
