"""Queue bounds, TTL and dead letters over real HTTP: full queue (reject / drop_oldest), ttl
expiry, and a dead-lettered item, each visible in /v1/results/{id} and counted in /v1/status."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgeroute.netproxy import ThreadedFaultProxy
from tests.edge_fixtures import EdgeNode
from tests.offline_support import fetch_results, offline_policy, wait_until

pytestmark = pytest.mark.ray

BUNDLE = "edge/digits"


def _queue(max_items: int, on_full: str, ttl_s: int = 86400) -> str:
    return f"max_items: {max_items}\n  max_bytes: 1048576\n  on_full: {on_full}\n  ttl_s: {ttl_s}"


def _ids(prefix: str, n: int) -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"{prefix}-{run}-{i}" for i in range(n)]


def _send(
    node: EdgeNode, x: np.ndarray, ids: list[str], task: str = "later"
) -> list[httpx.Response]:
    return [
        node.infer({"task": task, "inputs": x[i].tolist(), "request_id": rid})
        for i, rid in enumerate(ids)
    ]


def test_full_queue_reject_gives_429(
    start_edge: Callable[..., EdgeNode],
    proxy: ThreadedFaultProxy,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
) -> None:
    """on_full: reject -> 429 with Retry-After and a clear message; the id is not accepted."""
    x, _ = digits_split
    policy = offline_policy(  # the breaker stays open: no half-open escalation in between
        demo_bundles_dir / BUNDLE,
        queue=_queue(5, "reject"),
        breaker="{failure_threshold: 1, open_ms: 60000, open_max_ms: 60000}",
    )
    proxy.set_mode("down")
    node = start_edge(policy, f"http://127.0.0.1:{proxy.port}")
    ids = _ids("full", 7)
    resps = _send(node, x, ids)
    assert [r.status_code for r in resps[:5]] == [200] * 5
    assert all(r.json()["final"] is False for r in resps[:5])
    # the first answer was a failed escalation (verification queued); the rest queued offline
    rejected = resps[5]
    assert rejected.status_code == 429, rejected.text
    assert int(rejected.headers["Retry-After"]) >= 1
    err = rejected.json()["error"]
    assert err["code"] == "queue_full" and "queue full" in err["message"]
    assert httpx.get(f"{node.url}/v1/results/{ids[5]}", timeout=5).status_code == 404
    status = node.status()
    assert status["queue"]["depth"] == 5  # type: ignore[index]
    assert status["results"]["expired"] == 0  # type: ignore[index]


def test_batch_into_a_full_queue_refuses_only_the_items_that_do_not_fit(
    start_edge: Callable[..., EdgeNode],
    proxy: ThreadedFaultProxy,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
) -> None:
    """A batch queued in one write: the items that fit are queued, the rest
    get 429 queue_full entries with a retry hint, and no refused id is stored."""
    x, _ = digits_split
    policy = offline_policy(
        demo_bundles_dir / BUNDLE,
        queue=_queue(5, "reject"),
        breaker="{failure_threshold: 1, open_ms: 60000, open_max_ms: 60000}",
    )
    proxy.set_mode("down")
    node = start_edge(policy, f"http://127.0.0.1:{proxy.port}")
    first = _ids("bfirst", 1)
    assert _send(node, x, first)[0].status_code == 200  # opens the breaker
    ids = _ids("batch", 6)
    items = [
        {"task": "later", "inputs": x[i].tolist(), "request_id": rid} for i, rid in enumerate(ids)
    ]
    r = httpx.post(f"{node.url}/v1/infer", json={"items": items}, timeout=10)
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    # answered provisionally (the task's policy allows it), final answer pending the sync
    assert [(e["route"], e["final"]) for e in res[:4]] == [("queued", False)] * 4
    for refused in res[4:]:
        assert refused["http_status"] == 429 and refused["error"]["code"] == "queue_full"
        assert refused["retry_after_s"] > 0
    results = asyncio.run(fetch_results(node.url, first + ids))
    assert all(results[rid]["status"] == "pending" for rid in first + ids[:4])
    for rid in ids[4:]:
        assert httpx.get(f"{node.url}/v1/results/{rid}", timeout=5).status_code == 404
    assert node.status()["queue"]["depth"] == 5  # type: ignore[index]


def test_full_queue_drop_oldest_expires_oldest(
    start_edge: Callable[..., EdgeNode],
    proxy: ThreadedFaultProxy,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
) -> None:
    """on_full: drop_oldest accepts new items; the oldest become expired/queue_full, counted."""
    x, _ = digits_split
    policy = offline_policy(demo_bundles_dir / BUNDLE, queue=_queue(5, "drop_oldest"))
    proxy.set_mode("down")
    node = start_edge(policy, f"http://127.0.0.1:{proxy.port}")
    ids = _ids("drop", 8)
    assert all(r.status_code == 200 for r in _send(node, x, ids))
    results = asyncio.run(fetch_results(node.url, ids))
    for rid in ids[:3]:
        assert (results[rid]["status"], results[rid]["reason"]) == ("expired", "queue_full")
    assert all(results[rid]["status"] == "pending" for rid in ids[3:])
    status = node.status()
    assert status["results"]["expired"] == 3  # type: ignore[index]
    assert status["queue"]["depth"] == 5  # type: ignore[index]


def test_ttl_expiry(
    start_edge: Callable[..., EdgeNode],
    proxy: ThreadedFaultProxy,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
) -> None:
    """Items older than queue.ttl_s become expired/ttl_expired while the cloud is down."""
    x, _ = digits_split
    policy = offline_policy(demo_bundles_dir / BUNDLE, queue=_queue(100, "reject", ttl_s=1))
    proxy.set_mode("down")
    node = start_edge(policy, f"http://127.0.0.1:{proxy.port}")
    ids = _ids("ttl", 3)
    assert all(r.status_code == 200 for r in _send(node, x, ids))
    assert wait_until(lambda: node.status()["queue"]["depth"] == 0, 10)  # type: ignore[index]
    results = asyncio.run(fetch_results(node.url, ids))
    assert all((r["status"], r["reason"]) == ("expired", "ttl_expired") for r in results.values())
    assert node.status()["results"]["expired"] == 3  # type: ignore[index]


def test_dead_letter_after_max_attempts(
    start_edge: Callable[..., EdgeNode],
    proxy: ThreadedFaultProxy,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
) -> None:
    """An item the cloud rejects per item (unknown cloud task) is dead-lettered as failed
    with its last error after sync.max_attempts, and counted."""
    x, _ = digits_split
    ghost = (
        f"  ghost:\n    edge_bundle: {demo_bundles_dir / BUNDLE}\n    cloud_task: no-such-task\n"
        "    bundle_task: digits\n    threshold: 0.5\n    placement: cloud_first\n"
    )
    policy = offline_policy(
        demo_bundles_dir / BUNDLE,
        sync="batch_size: 8\n  interval_ms: 50\n  max_attempts: 2",
        tasks=ghost,
    )
    node = start_edge(policy, f"http://127.0.0.1:{proxy.port}")
    ids = _ids("dead", 2)
    resps = _send(node, x, ids, task="ghost")
    assert all(r.status_code == 200 for r in resps)
    assert all((r.json()["route"], r.json()["final"]) == ("edge", False) for r in resps)
    assert wait_until(lambda: node.status()["results"]["failed"] == 2, 15)  # type: ignore[index]
    results = asyncio.run(fetch_results(node.url, ids))
    for r in results.values():
        assert r["status"] == "failed" and "unknown_task" in r["error"], r
    assert node.status()["queue"]["depth"] == 0  # type: ignore[index]
