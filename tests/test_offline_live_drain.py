"""Guarantee 5: live requests keep their latency while a backlog drains. A real edge node
process with a prefilled queue and its cloud cut; then a fast fake re-ranker process comes
up on the cloud's port and the node drains at full speed (batch 64, unpaced) while local
answers are timed against the same measurement with no drain."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from edge_node.storage.queue_store import DurableQueue
from edge_node.storage.queued_item import QueuedItem
from edgeroute import processes
from tests.edge_fixtures import EdgeNode
from tests.offline_support import offline_policy

BACKLOG = 4000
IDLE_SAMPLES = 300
MIN_DRAIN_SAMPLES = 100
SLACK_MS = 3.0  # scheduling noise on a loaded 2-core machine


def _prefill(data_dir: Path, x: np.ndarray, n: int) -> None:
    """Queue `n` items for task `later` straight into the node's data dir (node stopped)."""
    from router.policy import QueueSettings

    q = DurableQueue(
        data_dir / "queue", QueueSettings(max_items=100_000, max_bytes=1 << 30, on_full="reject")
    )
    now = time.time()
    items = [
        QueuedItem(
            request_id=f"backlog-{i:06d}",
            task="later",
            cloud_task="digits",
            inputs=x[i % len(x)].tolist(),
            candidates=["1", "7", "9"],
            edge_label="7",
            edge_score=0.4,
            edge_candidates=[("7", 0.4), ("1", 0.3), ("9", 0.2)],
            model_version="digits-edge",
            enqueued_at=now,
            reason="cloud_unreachable",
        )
        for i in range(n)
    ]
    with ThreadPoolExecutor(8) as pool:  # concurrent puts share group commits
        list(pool.map(q.put, items))
    assert q.depth == n
    q.close()


def _live(client: httpx.Client, node: EdgeNode, body: dict[str, object], n: int) -> list[float]:
    """Send `n` live requests one after the other; their latencies in ms (each must be a
    final local answer)."""
    out: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        resp = client.post(f"{node.url}/v1/infer", json=body)
        out.append((time.perf_counter() - t0) * 1000)
        assert resp.status_code == 200, resp.text
        answer = resp.json()
        assert answer["final"] is True and answer["route"] == "edge", answer
    return out


def _depth(client: httpx.Client, node: EdgeNode) -> int:
    return int(client.get(f"{node.url}/v1/status").json()["queue"]["depth"])


@pytest.mark.timeout(120)
def test_live_latency_holds_while_backlog_drains(
    start_edge: Callable[..., EdgeNode],
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    """Local-answer p50 during a full-speed drain stays <= 3x idle p50 + 3 ms and no live
    request fails; the drain really overlaps the samples and ends with every item done."""
    x, _ = digits_split
    bundle = demo_bundles_dir / "edge" / "digits"
    local_task = (
        f"  local:\n    edge_bundle: {bundle}\n    bundle_task: digits\n    threshold: 0.0\n"
        "    placement: edge_only\n    deadline_ms: 2000\n"
    )
    policy = offline_policy(
        bundle, sync="batch_size: 64\n  interval_ms: 50\n  max_attempts: 3", tasks=local_task
    )
    data = tmp_path / "node-data"
    _prefill(data, x, BACKLOG)
    port = processes.free_port()  # nothing listens yet: the cloud is cut
    node = start_edge(policy, f"http://127.0.0.1:{port}", data_dir=data)
    body: dict[str, object] = {"task": "local", "inputs": x[0].tolist()}

    with httpx.Client(timeout=10) as client:
        _live(client, node, body, 30)  # warm-up
        idle = _live(client, node, body, IDLE_SAMPLES)
        assert _depth(client, node) == BACKLOG  # nothing drained while the cloud was cut

        log = tmp_path / "fake-cloud.log"
        cloud: subprocess.Popen[bytes] = processes.start(
            [sys.executable, "-m", "benchmarks.bench_queue", "--serve", str(port)], log
        )
        try:
            processes.wait_http(f"http://127.0.0.1:{port}/healthz", cloud, 30, log)
            during: list[float] = []
            depth = _depth(client, node)
            deadline = time.monotonic() + 60
            while depth and time.monotonic() < deadline:
                chunk = _live(client, node, body, 10)
                after = _depth(client, node)
                if 0 < after < depth:  # the drain ran during the whole chunk
                    during += chunk
                depth = after
            assert depth == 0, f"backlog not drained in time ({depth} left)"
        finally:
            processes.stop(cloud, timeout_s=10)
        counts = node.status()["results"]
    assert counts["done"] == BACKLOG  # type: ignore[index]

    p50_idle, p50_drain = float(np.median(idle)), float(np.median(during))
    p99_drain = float(np.percentile(during, 99))
    print(
        f"live p50 idle {p50_idle:.2f} ms, during drain {p50_drain:.2f} ms "
        f"(p99 {p99_drain:.2f} ms, {len(during)} samples)"
    )
    assert len(during) >= MIN_DRAIN_SAMPLES, f"only {len(during)} samples overlapped the drain"
    assert p50_drain <= 3 * p50_idle + SLACK_MS
