"""Durable cost budget: concurrent reservations never overspend; state survives restarts."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edge_node.storage.budget_store import BudgetStore, Reservation
from router.budget import DAY_S, BudgetState
from router.policy import CostSettings

DAY0 = 20_000 * DAY_S  # a UTC midnight
NOON = DAY0 + DAY_S / 2


class FakeClock:
    """A settable clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _store(path: Path, clock: FakeClock | None = None, **cost: object) -> BudgetStore:
    return BudgetStore(
        path,
        CostSettings(**cost),  # type: ignore[arg-type]
        clock=clock or FakeClock(NOON),
    )


def _reserve_from_threads(store: BudgetStore, n: int) -> list[Reservation | None]:
    barrier = threading.Barrier(n)
    out: list[Reservation | None] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        r = store.reserve()
        with lock:
            out.append(r)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_64_threads_get_exactly_the_call_budget(tmp_path: Path) -> None:
    """64 threads racing against daily_calls=10 get exactly 10 reservations."""
    with _store(tmp_path, daily_calls=10, price_per_call=0.5) as store:
        granted = [r for r in _reserve_from_threads(store, 64) if r is not None]
        assert len(granted) == 10
        assert store.snapshot() == BudgetState(DAY0, 10, 5.0)


def test_64_asyncio_tasks_get_exactly_the_money_budget(tmp_path: Path) -> None:
    """64 asyncio tasks (via a thread pool) against a 1.0 money budget at 0.1 get 10 calls."""
    with _store(tmp_path, daily_budget=1.0, price_per_call=0.1) as store:

        async def race() -> list[Reservation | None]:
            loop = asyncio.get_running_loop()
            with ThreadPoolExecutor(max_workers=16) as pool:
                return await asyncio.gather(
                    *(loop.run_in_executor(pool, store.reserve) for _ in range(64))
                )

        granted = [r for r in asyncio.run(race()) if r is not None]
        assert len(granted) == 10
        snap = store.snapshot()
        assert snap.calls == 10 and snap.spent == pytest.approx(1.0)


def test_two_stores_on_one_directory_share_the_budget(tmp_path: Path) -> None:
    """Two store objects on one directory (as two processes would) still grant only 10."""
    a = _store(tmp_path, daily_calls=10)
    b = _store(tmp_path, daily_calls=10)
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda i: (a if i % 2 else b).reserve(), range(40)))
        assert sum(r is not None for r in results) == 10
    finally:
        a.close()
        b.close()


def test_a_store_sees_what_another_store_spent_or_gave_back(tmp_path: Path) -> None:
    """A store whose known ledger is stale neither overspends (the other store used up the
    budget) nor refuses what the other store gave back."""
    a = _store(tmp_path, daily_calls=2)
    b = _store(tmp_path, daily_calls=2)
    try:
        assert a.known_ledger().counter("node/day", NOON).calls == 0
        got = [b.reserve(), b.reserve()]
        assert a.reserve() is None
        assert got[0] is not None and got[0].release() is True
        assert a.known_ledger().counter("node/day", NOON).calls == 2  # stale until a reserve
        assert a.reserve() is not None
        assert b.reserve() is None
        assert b.snapshot().calls == 2
    finally:
        a.close()
        b.close()


def test_a_reservation_is_one_sql_statement_and_the_known_ledger_none(tmp_path: Path) -> None:
    """Once the ledger is known, reserve runs one SQL statement (the compare-and-swap
    UPDATE) and known_ledger none; the call is counted on disk."""
    with _store(tmp_path, daily_calls=5) as store:
        assert store.reserve() is not None  # first: reads the ledger, then writes it
        statements: list[str] = []
        store._cache._con.set_trace_callback(statements.append)
        try:
            assert store.reserve() is not None
            assert store.known_ledger().counter("node/day", NOON).calls == 2
        finally:
            store._cache._con.set_trace_callback(None)
        # SQLite's trace repeats a statement for each trigger it fires (diskcache's size count)
        assert len(set(statements)) == 1 and statements[0].startswith("UPDATE Cache")
    with _store(tmp_path, daily_calls=5) as reopened:
        assert reopened.snapshot() == BudgetState(DAY0, 2, 0.0)


def test_release_gives_one_back_and_is_idempotent(tmp_path: Path) -> None:
    """release() returns a call and its money once; commit after release changes nothing."""
    with _store(tmp_path, daily_calls=2, price_per_call=0.25) as store:
        first, second = store.reserve(), store.reserve()
        assert first is not None and second is not None
        assert store.reserve() is None
        assert second.release() is True
        assert second.release() is False
        second.commit()
        assert second.state == "released"
        assert store.snapshot() == BudgetState(DAY0, 1, 0.25)
        third = store.reserve()
        assert third is not None
        third.commit()
        assert third.release() is False
        assert store.snapshot() == BudgetState(DAY0, 2, 0.5)


def test_restart_keeps_spending(tmp_path: Path) -> None:
    """Reservations made before a restart still count after reopening the directory."""
    with _store(tmp_path, daily_calls=3, price_per_call=1.5) as store:
        for _ in range(2):
            r = store.reserve()
            assert r is not None
            r.commit()
    with _store(tmp_path, daily_calls=3, price_per_call=1.5) as reopened:
        assert reopened.snapshot() == BudgetState(DAY0, 2, 3.0)
        assert reopened.reserve() is not None
        assert reopened.reserve() is None


def test_rollover_at_utc_midnight(tmp_path: Path) -> None:
    """A new UTC day starts from zero; releasing yesterday's reservation does not touch today."""
    clock = FakeClock(DAY0 + DAY_S - 1)
    with _store(tmp_path, clock, daily_calls=1) as store:
        late = store.reserve()
        assert late is not None and store.reserve() is None
        clock.now = DAY0 + DAY_S  # midnight
        assert store.snapshot() == BudgetState(DAY0 + DAY_S, 0, 0.0)
        today = store.reserve()
        assert today is not None
        assert late.release() is True
        assert store.snapshot() == BudgetState(DAY0 + DAY_S, 1, 0.0)
        clock.now = DAY0 + DAY_S - 5  # the clock steps back: today's spending is kept
        assert store.reserve() is None


def test_update_cost_applies_new_limits(tmp_path: Path) -> None:
    """A policy reload raising daily_calls lets more calls through, keeping those spent."""
    with _store(tmp_path, daily_calls=1) as store:
        assert store.reserve() is not None
        assert store.reserve() is None
        store.update_cost(CostSettings(daily_calls=2))
        assert store.reserve() is not None
        assert store.reserve() is None
        assert store.snapshot().calls == 2


def test_no_budget_means_unlimited(tmp_path: Path) -> None:
    """Without daily_calls or daily_budget every reservation is granted and counted."""
    with _store(tmp_path) as store:
        assert all(store.reserve() is not None for _ in range(50))
        assert store.snapshot().calls == 50


def test_threads_racing_on_an_hourly_task_budget_get_exactly_it(tmp_path: Path) -> None:
    """64 threads reserving against a task budget of 10 calls/hour get exactly 10, and the
    next hour starts from zero."""
    from router.budget import limits_for
    from router.policy import BudgetLimit, TaskPolicy

    clock = FakeClock(NOON)
    task = TaskPolicy(
        edge_bundle="b", threshold=0.5, budgets=[BudgetLimit(period="hour", calls=10)]
    )
    with _store(tmp_path, clock, price_per_call=0.1) as store:
        limits = limits_for(store.cost, task, "digits")
        barrier = threading.Barrier(64)

        def one(_: int) -> Reservation | None:
            barrier.wait()
            return store.reserve(limits=limits, price=0.1)

        with ThreadPoolExecutor(64) as pool:
            granted = [r for r in pool.map(one, range(64)) if r is not None]
        assert len(granted) == 10
        assert store.ledger().counter("task/digits/hour", NOON).calls == 10
        clock.now = NOON + 3_600
        assert store.reserve(limits=limits, price=0.1) is not None


def test_reserve_many_counts_in_order_until_a_limit_and_never_overspends(tmp_path: Path) -> None:
    """A batch of 5 against 3 calls left reserves the first 3 and refuses 2; a second store
    sharing the directory then finds the budget spent (it re-reads the disk before it
    refuses); released reservations give their calls back."""
    from router.budget import limits_for

    cost = CostSettings(daily_calls=3, price_per_call=0.5)
    a, b = _store(tmp_path, daily_calls=3, price_per_call=0.5), _store(tmp_path, daily_calls=3)
    lims = limits_for(cost)
    held = a.reserve_many(NOON, [(lims, 0.5)] * 5)
    assert [h is not None for h in held] == [True, True, True, False, False]
    assert b.reserve(NOON) is None and b.reserve_many(NOON, [(lims, 0.5)]) == [None]
    assert a.snapshot(NOON).calls == 3
    for h in held[:2]:
        assert h is not None and h.release()
    again = b.reserve_many(NOON, [(lims, 0.5)] * 3)
    assert [h is not None for h in again] == [True, True, False]
    assert a.ledger().counter("node/day", NOON).calls == 3
