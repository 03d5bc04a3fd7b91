"""SyncWorker cost charging, pacing and order (real stores in tmp_path, fake cloud client)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from edge_node.cloud.connectivity import ConnectivityMonitor
from edge_node.storage.queue_store import DurableQueue
from edge_node.storage.queued_item import QueuedItem
from edge_node.storage.result_store import ResultStore, ResultStoreError
from edge_node.sync.worker import SyncReport, SyncWorker
from router.errors import CloudUnavailable
from router.policy import BreakerSettings, QueueSettings, SyncSettings
from router.wire import RerankFailure, RerankItem, RerankResult, WireCandidate, WireError
from tests.sync_support import sync_worker
from tests.waiting import holds_within

NOW = 10_000.0
REPO = Path(__file__).resolve().parents[1]


def _item(rid: str, at: float = NOW) -> QueuedItem:
    return QueuedItem(
        request_id=rid,
        task="iris",
        cloud_task="iris-big",
        inputs=[1.0] * 64,
        candidates=["a", "b"],
        edge_label="b",
        edge_score=0.3,
        edge_candidates=[("b", 0.3), ("a", 0.2)],
        model_version="e1",
        enqueued_at=at,
        reason="below_threshold",
    )


class Cloud:
    """Answers each item; ids in `cached` come back cached, ids in `fail` as failures."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.cached: set[str] = set()
        self.fail: set[str] = set()
        self.error: Exception | None = None

    async def rerank(
        self, items: list[RerankItem], *, deadline_s: float, request_id: str | None = None
    ) -> list[RerankResult | RerankFailure]:
        self.calls.append([i.request_id for i in items])
        if self.error is not None:
            raise self.error
        out: list[RerankResult | RerankFailure] = []
        for i in items:
            if i.request_id in self.fail:
                err = WireError(code="unknown_task", message="no")
                out.append(RerankFailure(request_id=i.request_id, task=i.task, error=err))
            else:
                out.append(
                    RerankResult(
                        request_id=i.request_id,
                        task=i.task,
                        label="a",
                        score=0.9,
                        candidates=[WireCandidate(label="a", score=0.9)],
                        model_version="c1",
                        scored="candidates",
                        cached=i.request_id in self.cached,
                    )
                )
        return out

    async def health(self, timeout_s: float) -> bool:
        return True


class Ledger:
    """A budget of `left` calls; records commits and releases."""

    def __init__(self, left: int) -> None:
        self.left = left
        self.committed = 0
        self.released = 0

    def reserve(self, item: QueuedItem | None) -> object | None:
        if self.left <= 0:
            return None
        self.left -= 1
        ledger = self

        class _C:
            def commit(self) -> None:
                ledger.committed += 1

            def release(self) -> bool:
                ledger.released += 1
                ledger.left += 1
                return True

        return _C()


def _worker(
    tmp_path: Path, cloud: Cloud, *, ledger: Ledger | None = None, **sync: int
) -> tuple[DurableQueue, ResultStore, SyncWorker, list[float]]:
    q = DurableQueue(
        tmp_path / "q", QueueSettings(max_items=1000, max_bytes=1 << 22, on_full="reject")
    )
    rs = ResultStore(tmp_path / "r", clock=lambda: NOW)
    mon = ConnectivityMonitor(BreakerSettings(failure_threshold=1), clock=lambda: NOW)
    ticks = [0.0]

    def mono() -> float:
        ticks[0] += 0.01  # every call of the client "takes" 10 ms
        return ticks[0]

    settings = SyncSettings(**{"batch_size": 4, "interval_ms": 10, "max_attempts": 1, **sync})
    worker = sync_worker(
        q,
        rs,
        cloud,
        mon,
        settings,
        clock=lambda: NOW,
        ledger=ledger,
        monotonic=mono,
    )
    return q, rs, worker, ticks


def test_synced_items_are_charged_once(tmp_path: Path) -> None:
    """Fresh results commit a charge; cached results and failures give it back."""
    cloud, ledger = Cloud(), Ledger(100)
    q, rs, worker, _ = _worker(tmp_path, cloud, ledger=ledger)
    for rid in ("a", "b", "c", "d"):
        q.put(_item(rid))
    cloud.cached, cloud.fail = {"b"}, {"c"}
    report = asyncio.run(worker.run_once())
    assert (report.done, report.dead) == (3, 1)
    assert (ledger.committed, ledger.released, ledger.left) == (2, 2, 98)
    assert rs.counts()["done"] == 3 and rs.counts()["failed"] == 1


def test_retryable_error_releases_every_charge(tmp_path: Path) -> None:
    """A cloud outage charges nothing and leaves the items queued."""
    cloud, ledger = Cloud(), Ledger(100)
    q, _, worker, _ = _worker(tmp_path, cloud, ledger=ledger)
    for rid in ("a", "b"):
        q.put(_item(rid))
    cloud.error = CloudUnavailable("down")
    asyncio.run(worker.run_once())
    assert (ledger.committed, ledger.left, q.depth) == (0, 100, 2)


def test_exhausted_budget_keeps_items_queued(tmp_path: Path) -> None:
    """Items beyond the budget are not sent and stay queued (never overspend)."""
    cloud, ledger = Cloud(), Ledger(1)
    q, _, worker, _ = _worker(tmp_path, cloud, ledger=ledger)
    for rid in ("a", "b", "c"):
        q.put(_item(rid))
    report = asyncio.run(worker.run_once())
    assert cloud.calls == [["a"]] and report.over_budget == 2
    assert q.depth == 2 and ledger.committed == 1


def test_oldest_first_in_batches(tmp_path: Path) -> None:
    """Items leave in enqueue order, batch_size at a time."""
    cloud = Cloud()
    q, _, worker, _ = _worker(tmp_path, cloud)
    ids = [f"r{i}" for i in range(10)]
    for i, rid in enumerate(ids):
        q.put(_item(rid, at=NOW - 100 + i))
    for _ in range(3):
        asyncio.run(worker.run_once())
    assert cloud.calls == [ids[0:4], ids[4:8], ids[8:10]]


def test_pacing_bounds_the_drain_rate(tmp_path: Path) -> None:
    """With max_bytes_per_s, a round's pause makes bytes / (call time + pause) <= the rate."""
    cloud = Cloud()
    q, _, worker, _ = _worker(tmp_path, cloud, max_bytes_per_s=2048)
    for i in range(4):
        q.put(_item(f"p{i}"))
    report = asyncio.run(worker.run_once())
    assert report.bytes_sent > 1000
    assert report.pace_s > 0
    assert abs(report.bytes_sent / (report.pace_s + 0.01) - 2048) < 1.0


def test_unpaced_by_default(tmp_path: Path) -> None:
    """Without max_bytes_per_s no pause is asked for."""
    cloud = Cloud()
    q, _, worker, _ = _worker(tmp_path, cloud)
    q.put(_item("x"))
    assert asyncio.run(worker.run_once()).pace_s == 0.0


_CRASH_AFTER_RESULTS = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from pathlib import Path
    from tests.test_offline_sync import Cloud, _item, _worker

    q, rs, worker, _ = _worker(Path(sys.argv[1]), Cloud(), batch_size=64)
    for i in range(int(sys.argv[2])):
        q.put(_item(f"c{i:03d}"))
    real_remove = q.remove

    def crash_on_sync_remove(ids):
        ids = list(ids)
        if ids:  # the synced items: their results are committed, kill -9 before removal
            os.kill(os.getpid(), signal.SIGKILL)
        return real_remove(ids)

    q.remove = crash_on_sync_remove
    asyncio.run(worker.run_once())
    """
)


def test_crash_between_results_and_removal_resolves_on_next_sync(tmp_path: Path) -> None:
    """kill -9 after a batch's results are committed but before its items leave the queue:
    every result is `done` and every item still queued; the next round re-sends them, the
    cloud answers from its dedup store, each stays `done` once and the queue empties."""
    n = 40
    proc = subprocess.run(
        [sys.executable, "-c", _CRASH_AFTER_RESULTS, str(tmp_path), str(n)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    ids = [f"c{i:03d}" for i in range(n)]

    cloud, ledger = Cloud(), Ledger(100)
    cloud.cached = set(ids)  # the cloud computed them before the crash
    q, rs, worker, _ = _worker(tmp_path, cloud, ledger=ledger, batch_size=64)
    assert q.depth == n
    assert rs.counts() == {"pending": 0, "done": n, "expired": 0, "failed": 0, "quarantined": 0}
    first = {rid: (rs.get(rid) or {})["result"] for rid in ids}

    report = asyncio.run(worker.run_once())
    assert cloud.calls == [ids]  # at-least-once on the wire
    assert report.done == n and q.depth == 0
    assert rs.counts() == {"pending": 0, "done": n, "expired": 0, "failed": 0, "quarantined": 0}
    assert {rid: (rs.get(rid) or {})["result"] for rid in ids} == first
    assert (ledger.committed, ledger.released, ledger.left) == (0, n, 100)  # charged once


# --- pipelined drain ---------------------------------------------------------------------


class SlowResults(ResultStore):
    """A result store whose batch commits wait (up to `hold_s`) until the cloud has been
    called once more, so that a pipelined drain sends round N+1 while round N commits."""

    cloud: Cloud
    hold_s = 0.5
    committing = 0  # batch commits in progress
    fail_first = False

    def put_done_many(self, results: Sequence[tuple[str, dict[str, Any]]]) -> None:
        self.committing += 1
        try:
            calls = len(self.cloud.calls)
            holds_within(lambda: len(self.cloud.calls) != calls, self.hold_s, 0.001)
            if self.fail_first:
                self.fail_first = False
                raise ResultStoreError("disk full")
            super().put_done_many(results)
        finally:
            self.committing -= 1


class OverlapCloud(Cloud):
    """`Cloud` that also notes, per call, whether a batch commit was in progress."""

    results: SlowResults

    def __init__(self) -> None:
        super().__init__()
        self.overlapped: list[bool] = []

    async def rerank(
        self, items: list[RerankItem], *, deadline_s: float, request_id: str | None = None
    ) -> list[RerankResult | RerankFailure]:
        self.overlapped.append(self.results.committing > 0)
        return await super().rerank(items, deadline_s=deadline_s, request_id=request_id)


def _pipelined(
    tmp_path: Path, *, ledger: Ledger | None = None
) -> tuple[DurableQueue, SlowResults, OverlapCloud, SyncWorker]:
    """Real queue, a SlowResults store and an OverlapCloud, batch_size 4."""
    q = DurableQueue(
        tmp_path / "q", QueueSettings(max_items=1000, max_bytes=1 << 22, on_full="reject")
    )
    rs = SlowResults(tmp_path / "r", clock=lambda: NOW)
    cloud = OverlapCloud()
    rs.cloud, cloud.results = cloud, rs
    mon = ConnectivityMonitor(BreakerSettings(failure_threshold=1), clock=lambda: NOW)
    settings = SyncSettings(batch_size=4, interval_ms=10, max_attempts=3)
    worker = sync_worker(q, rs, cloud, mon, settings, clock=lambda: NOW, ledger=ledger)
    return q, rs, cloud, worker


def test_drain_never_sends_an_item_in_flight_again(tmp_path: Path) -> None:
    """While round N commits, round N+1 sends the next items, never round N's again:
    every item goes on the wire once, oldest first, and is stored done once."""
    q, rs, cloud, worker = _pipelined(tmp_path)
    ids = [f"r{i}" for i in range(10)]
    for i, rid in enumerate(ids):
        q.put(_item(rid, at=NOW - 100 + i))
    report = asyncio.run(worker.drain())
    assert cloud.calls == [ids[0:4], ids[4:8], ids[8:10]]
    assert cloud.overlapped == [False, True, True]  # the pipeline did overlap
    assert (report.sent, report.done, q.depth) == (10, 10, 0)
    assert rs.counts() == {"pending": 0, "done": 10, "expired": 0, "failed": 0, "quarantined": 0}


def test_drain_rereads_failed_items_after_their_round(tmp_path: Path) -> None:
    """An item that failed in round N is not sent by round N+1 (still in flight when that
    round read the queue) but by the next one; the drain ends on a round that stored
    nothing and the next drain sends the item again."""
    q, _, cloud, worker = _pipelined(tmp_path)
    ids = [f"r{i}" for i in range(8)]
    for i, rid in enumerate(ids):
        q.put(_item(rid, at=NOW - 100 + i))
    cloud.fail = {"r1"}

    async def scenario() -> tuple[SyncReport, SyncReport]:
        first = await worker.drain()  # ends on the round where only r1 (failing) was sent
        cloud.fail = set()
        return first, await worker.drain()

    first, second = asyncio.run(scenario())
    assert cloud.calls == [ids[0:4], ids[4:8], ["r1"], ["r1"]]
    assert (first.done, first.failed, second.done, q.depth) == (7, 2, 1, 0)
    assert q.get("r1") is None


def test_drain_store_error_still_stores_the_next_batch(tmp_path: Path) -> None:
    """If round N's commit fails, round N+1 (already answered) is still stored and its
    charges settled before the error propagates; round N's items stay queued."""
    ledger = Ledger(100)
    q, rs, cloud, worker = _pipelined(tmp_path, ledger=ledger)
    ids = [f"r{i}" for i in range(8)]
    for i, rid in enumerate(ids):
        q.put(_item(rid, at=NOW - 100 + i))
    rs.fail_first = True
    with pytest.raises(ResultStoreError):
        asyncio.run(worker.drain())
    assert cloud.calls == [ids[0:4], ids[4:8]]
    assert [g.request_id for g in q.oldest(10)] == ids[0:4]
    assert all((rs.get(rid) or {}).get("status") == "done" for rid in ids[4:8])
    assert (ledger.committed, ledger.left) == (8, 92)  # no charge left pending


def test_drain_stops_on_a_round_that_stores_nothing(tmp_path: Path) -> None:
    """The drain sends what the budget allows, then ends when a round has nothing to
    send (over budget); the unsent items stay queued."""
    cloud, ledger = Cloud(), Ledger(5)
    q, _, worker, _ = _worker(tmp_path, cloud, ledger=ledger)
    ids = [f"r{i}" for i in range(8)]
    for i, rid in enumerate(ids):
        q.put(_item(rid, at=NOW - 100 + i))
    report = asyncio.run(worker.drain())
    assert cloud.calls == [ids[0:4], ids[4:5]]
    assert report.done == 5 and report.over_budget == 3 + 3
    assert [g.request_id for g in q.oldest(10)] == ids[5:8]


def test_drain_paces_between_rounds(tmp_path: Path) -> None:
    """With max_bytes_per_s, a drain pauses after each round that is followed by another
    for that round's pace, so bytes / (call time + pause) <= the rate."""
    cloud = Cloud()
    q, _, worker, _ = _worker(tmp_path, cloud, max_bytes_per_s=2048)
    pauses: list[float] = []

    async def sleep(s: float) -> None:
        pauses.append(s)

    worker._sleep = sleep
    for i in range(8):
        q.put(_item(f"p{i}", at=NOW - 100 + i))
    report = asyncio.run(worker.drain())
    assert report.done == 8 and len(cloud.calls) == 2
    assert len(pauses) == 2 and all(p > 0 for p in pauses)
    assert abs(report.bytes_sent / (sum(pauses) + 2 * 0.01) - 2048) < 1.0


_CRASH_MID_PIPELINE = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from pathlib import Path
    from tests.test_offline_sync import Cloud, _item, _worker
    from tests.waiting import holds_within

    cloud = Cloud()
    q, rs, worker, _ = _worker(Path(sys.argv[1]), cloud, batch_size=4)
    for i in range(int(sys.argv[2])):
        q.put(_item(f"c{i:03d}", at=1000.0 + i))
    real_remove = q.remove

    def crash_on_sync_remove(ids):
        ids = list(ids)
        if ids:  # batch 1's results are committed; wait until batch 2 is on the wire
            holds_within(lambda: len(cloud.calls) >= 2, 10, 0.001)
            print(f"calls before the crash: {len(cloud.calls)}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return real_remove(ids)

    q.remove = crash_on_sync_remove
    asyncio.run(worker.drain())
    """
)


def test_crash_mid_pipeline_loses_nothing(tmp_path: Path) -> None:
    """kill -9 while batch 1's results are committed but its items not yet removed, and
    batch 2 is answered but not stored: every item is still queued; the next drain
    re-sends both batches (the cloud answers from its dedup store) and each item ends
    `done` once, charged once, with the queue empty."""
    n = 12
    proc = subprocess.run(
        [sys.executable, "-c", _CRASH_MID_PIPELINE, str(tmp_path), str(n)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert "calls before the crash: 2" in proc.stdout.decode()  # batch 2 was on the wire
    ids = [f"c{i:03d}" for i in range(n)]

    cloud, ledger = Cloud(), Ledger(100)
    cloud.cached = set(ids[:8])  # the cloud computed batches 1 and 2 before the crash
    q, rs, worker, _ = _worker(tmp_path, cloud, ledger=ledger, batch_size=4)
    assert q.depth == n and rs.counts()["done"] == 4  # only batch 1's results were stored

    report = asyncio.run(worker.drain())
    assert cloud.calls == [ids[0:4], ids[4:8], ids[8:12]]
    assert report.done == n and q.depth == 0
    assert rs.counts() == {"pending": 0, "done": n, "expired": 0, "failed": 0, "quarantined": 0}
    assert (ledger.committed, ledger.released, ledger.left) == (4, 8, 96)  # charged once
