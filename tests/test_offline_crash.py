"""Crash test: 2,000 queued requests survive repeated kill -9 of the edge node (while
enqueueing and while draining) and each reaches `done`, computed once by the cloud."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgeroute import processes
from edgeroute.netproxy import ThreadedFaultProxy
from tests.edge_fixtures import EdgeNode
from tests.offline_support import (
    cloud_computed,
    cloud_stats,
    fetch_results,
    offline_policy,
    send_all,
    wait_until,
)

pytestmark = pytest.mark.ray

N_REQUESTS = 2000


def _send_killing(
    node: EdgeNode, bodies: list[dict[str, object]], kill_after: int | None
) -> set[str]:
    """Send `bodies`; when `kill_after` answers have arrived, kill -9 the node mid-flood.
    Returns the request_ids acknowledged as queued (200, not final)."""
    acked: set[str] = set()
    lock = threading.Lock()

    def on_answer(_: int, resp: httpx.Response) -> None:
        if resp.status_code != 200:
            return
        body = resp.json()
        assert body["final"] is False, body  # the cloud is down: nothing is final
        with lock:
            acked.add(body["request_id"])
            if kill_after is not None and len(acked) == kill_after:
                processes.kill(node.proc)

    asyncio.run(send_all(node.url, bodies, concurrency=16, on_answer=on_answer))
    return acked


def _depth(node: EdgeNode) -> int:
    return int(node.status()["queue"]["depth"])  # type: ignore[index]


def test_kill9_during_enqueue_and_drain_loses_nothing(
    start_edge: Callable[..., EdgeNode],
    proxy: ThreadedFaultProxy,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
    cloud_url: str,
    tmp_path: Path,
) -> None:
    """Every acknowledged id of 2,000 ends `done` after 4 kill -9s, and the cloud computed
    each exactly once."""
    rng = random.Random()
    x, _ = digits_split
    run = uuid.uuid4().hex[:10]
    ids = [f"crash-{run}-{i}" for i in range(N_REQUESTS)]
    bodies = {
        rid: {"task": "later", "inputs": x[i % len(x)].tolist(), "request_id": rid}
        for i, rid in enumerate(ids)
    }
    policy = offline_policy(
        demo_bundles_dir / "edge" / "digits",
        sync="batch_size: 16\n  interval_ms: 50\n  max_attempts: 3",
    )
    data = tmp_path / "crash-data"
    url = f"http://127.0.0.1:{proxy.port}"
    proxy.set_mode("down")

    computed_before = cloud_stats(cloud_url)["computed_total"]
    acked: set[str] = set()
    kills = 0
    t0 = time.monotonic()
    # Two crashes while requests are being queued, then one pass with no crash.
    for round_no, kill_frac in enumerate((rng.uniform(0.2, 0.5), rng.uniform(0.2, 0.6), None)):
        node = start_edge(policy, url, data_dir=data, name=f"enq{round_no}")
        todo = [rid for rid in ids if rid not in acked]
        kill_after = None if kill_frac is None else max(1, int(len(todo) * kill_frac))
        acked |= _send_killing(node, [bodies[r] for r in todo], kill_after)
        if kill_after is not None:
            assert node.proc.poll() is not None
            kills += 1
    assert acked == set(ids)
    assert _depth(node) >= N_REQUESTS  # pending ids killed before their answer may be extra
    t_enqueued = time.monotonic() - t0

    # Bring the cloud up; kill -9 twice while the queue drains, at random depths.
    proxy.set_mode("pass")
    for round_no in range(2):
        start_depth = _depth(node)
        target = int(start_depth * rng.uniform(0.3, 0.8))
        assert wait_until(lambda n=node, t=target: _depth(n) <= t, 60), "drain stalled"
        processes.kill(node.proc)
        kills += 1
        node = start_edge(policy, url, data_dir=data, name=f"drain{round_no}")
    assert wait_until(lambda: _depth(node) == 0, 90), "queue did not drain"
    elapsed = time.monotonic() - t0

    results = asyncio.run(fetch_results(node.url, ids))
    not_done = {rid: r for rid, r in results.items() if r.get("status") != "done"}
    assert not not_done, list(not_done.items())[:5]
    assert all(str(r["model_version"]).startswith("digits-cloud") for r in results.values())
    counts = cloud_computed(cloud_url, ids)
    wrong = {rid: n for rid, n in counts.items() if n != 1}
    assert not wrong, list(wrong.items())[:10]
    assert cloud_stats(cloud_url)["computed_total"] - computed_before == N_REQUESTS
    status = node.status()
    assert status["results"]["failed"] == 0 and status["results"]["expired"] == 0  # type: ignore[index]
    assert kills >= 4
    print(f"crash test: {kills} kills, enqueue phase {t_enqueued:.1f}s, total {elapsed:.1f}s")
