"""Sync rounds whose cloud call ends in a refusal that is not the items' fault: refused
credentials pause the sync, an id conflict is final and never overwrites an earlier
answer (real stores in tmp_path, the fake cloud of tests/test_sync_worker.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from router.errors import CloudUnauthorized
from tests.test_sync_worker import item, setup


def test_refused_credentials_pause_sync_without_spending_attempts(tmp_path: Path) -> None:
    """Rounds refused with 401/403 count no attempt, mark the credentials rejected, send
    one item per round while rejected, and once the cloud accepts the node again every
    item drains to done."""
    q, rs, mon, cloud, worker, _ = setup(tmp_path, max_attempts=1)
    for i in range(3):
        q.put(item(f"c{i}"))
    cloud.error = CloudUnauthorized("cloud refused the node's credentials: 401")
    for _ in range(4):
        report = asyncio.run(worker.run_once())
        assert report.paused_credentials and (report.failed, report.dead) == (0, 0)
    assert [len(c) for c in cloud.calls] == [3, 1, 1, 1]  # then one item per probe round
    assert q.depth == 3 and all(i.attempts == 0 for i in q.oldest(5))
    assert rs.counts().get("failed", 0) == 0
    snap = mon.snapshot()
    assert snap.credentials == "rejected" and snap.breaker == "closed"
    cloud.error = None
    report = asyncio.run(worker.run_once())
    assert report.done == 1 and not report.paused_credentials
    report = asyncio.run(worker.run_once())
    assert report.done == 2 and q.depth == 0
    assert mon.snapshot().credentials == "accepted"


def test_id_conflict_dead_letters_at_once_and_keeps_an_earlier_done_result(
    tmp_path: Path,
) -> None:
    """A request_id_conflict is final (no more attempts); an id that already holds a done
    result keeps it, a new id gets a failed result naming the conflict."""
    q, rs, _, cloud, worker, _ = setup(tmp_path, max_attempts=5)
    rs.put_done("kept", {"label": "a"})
    q.put(item("kept"))
    q.put(item("fresh"))
    cloud.fail_ids, cloud.fail_code = {"kept", "fresh"}, "request_id_conflict"
    report = asyncio.run(worker.run_once())
    assert (report.failed, report.dead) == (2, 2) and q.depth == 0
    assert (rs.get("kept") or {})["status"] == "done"
    fresh = rs.get("fresh") or {}
    assert fresh["status"] == "failed" and "request_id_conflict" in fresh["error"]
