"""SyncWorker: fake cloud for the rules, real HTTP on 127.0.0.1 for one end-to-end drain."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import structlog

from edge_node.cloud.client import CloudClient
from edge_node.cloud.connectivity import ConnectivityMonitor
from edge_node.storage.queue_store import DurableQueue
from edge_node.storage.queued_item import QueuedItem
from edge_node.storage.result_store import ResultStore
from edge_node.sync.worker import SyncWorker
from router.errors import CloudRejected, CloudUnavailable
from router.log_setup import sampler
from router.policy import (
    BreakerSettings,
    CloudSettings,
    QueueSettings,
    RetrySettings,
    SyncSettings,
)
from router.wire import RerankFailure, RerankItem, RerankResult, WireCandidate, WireError
from tests.sync_support import sync_worker
from tests.waiting import until

NOW = 10_000.0


def item(rid: str, at: float = NOW) -> QueuedItem:
    return QueuedItem(
        request_id=rid,
        task="iris",
        cloud_task="iris-big",
        inputs=[1.0, 2.0],
        candidates=["a", "b"],
        edge_label="b",
        edge_score=0.3,
        edge_candidates=[("b", 0.3), ("a", 0.2)],
        model_version="e1",
        enqueued_at=at,
        reason="below_threshold",
    )


def result(it: RerankItem) -> RerankResult:
    return RerankResult(
        request_id=it.request_id,
        task=it.task,
        label="a",
        score=0.8,
        candidates=[WireCandidate(label="a", score=0.8)],
        model_version="c1",
        scored="candidates",
    )


class FakeCloud:
    """Answers every item, or per-item failures for ids in `fail_ids`, or raises `error`."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.error: Exception | None = None
        self.fail_ids: set[str] = set()
        self.fail_code = "unknown_label"
        self.healthy = True
        self.health_calls = 0

    async def rerank(
        self, items: list[RerankItem], *, deadline_s: float, request_id: str | None = None
    ) -> list[RerankResult | RerankFailure]:
        self.calls.append([i.request_id for i in items])
        if self.error is not None:
            raise self.error
        return [
            RerankFailure(
                request_id=i.request_id,
                task=i.task,
                error=WireError(code=self.fail_code, message="refused"),
            )
            if i.request_id in self.fail_ids
            else result(i)
            for i in items
        ]

    async def health(self, timeout_s: float) -> bool:
        self.health_calls += 1
        return self.healthy


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class OrderCheckingQueue(DurableQueue):
    """Fails the test if an item leaves the queue before its final status is stored."""

    results: ResultStore

    def remove(self, request_ids: Iterable[str]) -> int:
        ids = list(request_ids)
        for rid in ids:
            rec = self.results.get(rid)
            assert rec is not None and rec["status"] in ("done", "failed", "expired"), rid
        return super().remove(ids)


def setup(
    tmp_path: Path,
    *,
    batch: int = 10,
    max_attempts: int = 2,
    ttl_s: int = 3600,
    threshold: int = 1,
    sample: Callable[[], bool] = lambda: True,
    on_synced: Callable[[list[tuple[QueuedItem, RerankResult]]], None] | None = None,
) -> tuple[OrderCheckingQueue, ResultStore, ConnectivityMonitor, FakeCloud, SyncWorker, Clock]:
    """Real stores in tmp_path, a fake cloud, a breaker that opens on the first failure."""
    clock = Clock()
    q = OrderCheckingQueue(
        tmp_path / "q",
        QueueSettings(max_items=1000, max_bytes=1 << 20, on_full="reject", ttl_s=ttl_s),
    )
    rs = ResultStore(tmp_path / "r", clock=clock)
    q.results = rs
    mon = ConnectivityMonitor(
        BreakerSettings(failure_threshold=threshold, open_ms=1000), clock=clock, rng=lambda: 0.5
    )
    cloud = FakeCloud()
    worker = sync_worker(
        q,
        rs,
        cloud,
        mon,
        SyncSettings(batch_size=batch, interval_ms=10, max_attempts=max_attempts),
        clock=clock,
        sample=sample,
        on_synced=on_synced,
    )
    return q, rs, mon, cloud, worker, clock


def test_batch_is_stored_done_then_removed_oldest_first(tmp_path: Path) -> None:
    """One round sends the oldest batch_size items and stores cloud results as done."""
    q, rs, mon, cloud, worker, _ = setup(tmp_path, batch=3)
    for i in range(5):
        q.put(item(f"r{i}", at=NOW - 10 + i))
    report = asyncio.run(worker.run_once())
    assert (report.sent, report.done, report.failed) == (3, 3, 0)
    assert cloud.calls == [["r0", "r1", "r2"]]
    assert [g.request_id for g in q.oldest(10)] == ["r3", "r4"]
    rec = rs.get("r0") or {}
    assert rec["status"] == "done"
    assert {k: rec["result"][k] for k in ("label", "route", "reason", "model_version")} == {
        "label": "a",
        "route": "cloud",
        "reason": "synced",
        "model_version": "c1",
    }
    assert "inputs" not in rec["result"]
    assert mon.state == "online"


def test_sync_done_lines_follow_the_log_sampler(tmp_path: Path) -> None:
    """Per-item `sync_done` lines are written only when the sampler says so; the items are
    stored done either way."""
    for rate, expected in ((0.0, 0), (1.0, 3)):
        q, rs, _, _, worker, _ = setup(
            tmp_path / str(rate), batch=3, sample=sampler(rate, lambda: 0.5)
        )
        for i in range(3):
            q.put(item(f"r{i}", at=NOW - 10 + i))
        with structlog.testing.capture_logs() as logs:
            report = asyncio.run(worker.run_once())
        assert report.done == 3
        assert sum(e["event"] == "sync_done" for e in logs) == expected
        assert all(rs.get(f"r{i}")["status"] == "done" for i in range(3))  # type: ignore[index]


def test_on_synced_sees_each_round_and_its_failure_costs_nothing(tmp_path: Path) -> None:
    """`on_synced` gets each stored item with its cloud result; if it raises, the round
    still stores every result and empties the queue."""
    seen: list[tuple[str, str]] = []

    def record(done: list[tuple[QueuedItem, RerankResult]]) -> None:
        seen.extend((item.request_id, res.label) for item, res in done)
        raise OSError("disk full")

    q, rs, _, _, worker, _ = setup(tmp_path, batch=3, on_synced=record)
    for i in range(3):
        q.put(item(f"r{i}", at=NOW - 10 + i))
    with structlog.testing.capture_logs() as logs:
        report = asyncio.run(worker.run_once())
    assert report.done == 3 and q.depth == 0
    assert [rid for rid, _ in seen] == ["r0", "r1", "r2"]
    assert all(rs.get(f"r{i}")["status"] == "done" for i in range(3))  # type: ignore[index]
    assert any(e["event"] == "sync_record_failed" for e in logs)


def test_retryable_error_leaves_items_untouched(tmp_path: Path) -> None:
    """CloudUnavailable: no attempt counted, items stay, monitor records the failure."""
    q, rs, mon, cloud, worker, _ = setup(tmp_path)
    q.put(item("r0"))
    cloud.error = CloudUnavailable("down", retry_after_s=5.0)
    report = asyncio.run(worker.run_once())
    assert (report.sent, report.done, report.failed) == (1, 0, 0)
    assert q.oldest(1)[0].attempts == 0 and rs.get("r0") is None
    assert mon.state == "offline"
    assert (mon.snapshot().open_until or 0) - NOW >= 5.0


def test_offline_skips_the_cloud(tmp_path: Path) -> None:
    """While the breaker is open the worker does not call the cloud."""
    q, _, mon, cloud, worker, _ = setup(tmp_path)
    q.put(item("r0"))
    mon.record_failure()
    report = asyncio.run(worker.run_once())
    assert report.skipped_offline and cloud.calls == []
    assert q.depth == 1


def test_item_failure_dead_letters_after_max_attempts(tmp_path: Path) -> None:
    """A RerankFailure counts an attempt; at max_attempts the item is failed and removed."""
    q, rs, _, cloud, worker, _ = setup(tmp_path, max_attempts=2)
    q.put(item("bad"))
    q.put(item("good"))
    cloud.fail_ids = {"bad"}
    first = asyncio.run(worker.run_once())
    assert (first.done, first.failed, first.dead) == (1, 1, 0)
    assert q.oldest(5)[0].attempts == 1
    second = asyncio.run(worker.run_once())
    assert (second.failed, second.dead) == (1, 1)
    assert q.depth == 0
    rec = rs.get("bad") or {}
    assert rec["status"] == "failed" and "unknown_label" in rec["error"]


def test_cloud_rejected_counts_attempts_for_the_batch(tmp_path: Path) -> None:
    """A whole-call CloudRejected counts an attempt per item and keeps the cloud online."""
    q, rs, mon, cloud, worker, _ = setup(tmp_path, max_attempts=1)
    q.put(item("r0"))
    q.put(item("r1"))
    cloud.error = CloudRejected("cloud rejected the request: 422 invalid_input")
    report = asyncio.run(worker.run_once())
    assert (report.failed, report.dead) == (2, 2)
    assert rs.counts()["failed"] == 2 and q.depth == 0
    assert mon.state == "online"


def test_expired_items_are_recorded_even_offline(tmp_path: Path) -> None:
    """Items past ttl_s become expired results and leave the queue, cloud or not."""
    q, rs, mon, cloud, worker, _ = setup(tmp_path, ttl_s=60)
    q.put(item("old", at=NOW - 61))
    q.put(item("young", at=NOW - 1))
    mon.record_failure()
    report = asyncio.run(worker.run_once())
    assert report.expired == 1 and report.skipped_offline and cloud.calls == []
    assert (rs.get("old") or {})["status"] == "expired"
    assert [g.request_id for g in q.oldest(5)] == ["young"]


def test_run_forever_survives_errors_and_probes_back_online(tmp_path: Path) -> None:
    """A crashing round is logged and retried; an open breaker is closed by a health probe."""
    q, rs, mon, cloud, worker, clock = setup(tmp_path)
    mon.record_failure()  # offline, nothing queued: only a probe can bring it back
    stop = asyncio.Event()
    pauses: list[float] = []  # one per pause between rounds: a round has ended

    async def fake_sleep(s: float) -> None:
        pauses.append(s)
        clock.t += s
        await asyncio.sleep(0)

    worker._sleep = fake_sleep
    cloud.error = RuntimeError("bug")

    async def scenario() -> None:
        task = asyncio.create_task(worker.run_forever(stop))
        # two pauses: a whole round (its probe check and its drain) ran in between
        await until(lambda: len(pauses) >= 2, 10, 0.001, what="two sync rounds")
        assert cloud.health_calls == 0  # not before the open time has elapsed
        clock.t += 1.0
        await until(  # rounds do their disk work in worker threads
            lambda: mon.state == "online" and cloud.health_calls, 10, 0.001, what="a probe"
        )
        assert mon.state == "online" and cloud.health_calls >= 1
        sent = len(cloud.calls)
        q.put(item("r0"))
        # the RuntimeError rounds must not kill the loop: a second call is a retry after one
        await until(lambda: len(cloud.calls) >= sent + 2, 10, 0.001, what="a crashed round's retry")
        cloud.error = None
        await until(lambda: q.depth == 0, 10, 0.001, what="the queue to drain")
        stop.set()
        await asyncio.wait_for(task, 2.0)

    asyncio.run(scenario())
    assert q.depth == 0 and (rs.get("r0") or {})["status"] == "done"


# --- end to end over real HTTP ---------------------------------------------------------


class _FakeCloudHandler(BaseHTTPRequestHandler):
    batches: list[list[str]]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        self._send(200 if self.path == "/healthz" else 404, {"ok": True})

    def do_POST(self) -> None:
        data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.headers["X-Edgeroute-Node"] == "edge-it"
        self.batches.append([i["request_id"] for i in data["items"]])
        self._send(
            200,
            {
                "results": [
                    {
                        "request_id": i["request_id"],
                        "task": i["task"],
                        "label": i["candidates"][0],
                        "score": 0.9,
                        "candidates": [{"label": i["candidates"][0], "score": 0.9}],
                        "model_version": "cloud-1",
                        "scored": "candidates",
                    }
                    for i in data["items"]
                ]
            },
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(60)
def test_end_to_end_drain_after_outage(tmp_path: Path) -> None:
    """200 queued items survive a cloud outage untouched, then drain oldest first in
    batches over real HTTP once the cloud is up; every result is done, the queue empty."""
    port = _free_port()
    q = DurableQueue(
        tmp_path / "q", QueueSettings(max_items=1000, max_bytes=1 << 22, on_full="reject")
    )
    rs = ResultStore(tmp_path / "r")
    ids = [f"req-{i:03d}" for i in range(200)]
    now = time.time()
    for i, rid in enumerate(ids):
        q.put(item(rid, at=now - 100 + i * 0.01))
    cloud_settings = CloudSettings(
        url=f"http://127.0.0.1:{port}",
        connect_timeout_ms=200,
        request_timeout_ms=1000,
        retry=RetrySettings(max_attempts=2, backoff_initial_ms=5, backoff_max_ms=10),
        breaker=BreakerSettings(
            failure_threshold=1, open_ms=50, open_max_ms=100, probe_interval_ms=20
        ),
    )
    mon = ConnectivityMonitor(cloud_settings.breaker)

    async def scenario() -> list[list[str]]:
        client = CloudClient(cloud_settings, node_id="edge-it")
        worker = sync_worker(
            q,
            rs,
            client,
            mon,
            SyncSettings(batch_size=64, interval_ms=10, max_attempts=3),
            deadline_s=1.0,
        )
        try:
            down = await worker.run_once()
            assert down.sent == 64 and down.done == 0
            assert mon.state == "offline" and q.depth == 200
            assert all(g.attempts == 0 for g in q.oldest(200))

            batches: list[list[str]] = []
            handler = type("H", (_FakeCloudHandler,), {"batches": batches})
            server = ThreadingHTTPServer(("127.0.0.1", port), handler)
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            stop = asyncio.Event()
            task = asyncio.create_task(worker.run_forever(stop))
            try:
                await until(lambda: q.depth == 0, 20, what="the queue to drain")
            finally:
                stop.set()
                await asyncio.wait_for(task, 5)
                server.shutdown()
                server.server_close()
                thread.join(5)
            return batches
        finally:
            await client.aclose()

    batches = asyncio.run(scenario())
    assert q.depth == 0 and q.bytes == 0
    assert [len(b) for b in batches] == [64, 64, 64, 8]
    assert [rid for b in batches for rid in b] == ids
    assert rs.counts() == {"pending": 0, "done": 200, "expired": 0, "failed": 0, "quarantined": 0}
    rec = rs.get("req-123") or {}
    assert rec["result"]["label"] == "a" and rec["result"]["model_version"] == "cloud-1"
    q.close()
    rs.close()
