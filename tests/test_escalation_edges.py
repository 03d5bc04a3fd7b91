"""The escalation step's edges: a client bug, a cancellation during the cloud call or during
off-loop reservations, and the time reservations take, each leave the budget settled (real
budget store and breaker; the cloud client is a small fake, since these are the step's own
rules, not the client's)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_node.cloud.connectivity import ConnectivityMonitor
from edge_node.escalation import Call, Escalation
from edge_node.observe.metrics import EdgeMetrics
from edge_node.storage.budget_store import BudgetStore
from router.budget import limits_for
from router.policy import BreakerSettings, CostSettings
from router.wire import RerankItem, RerankResult, WireCandidate
from tests.waiting import until

COST = CostSettings(price_per_call=0.01, daily_calls=10)


class FakeClient:
    """A cloud client whose `rerank` runs `behaviour(items, deadline_s)`."""

    def __init__(self, behaviour: Callable[[list[RerankItem], float], Any]) -> None:
        self.behaviour = behaviour
        self.deadlines: list[float] = []
        self.entered = asyncio.Event()

    async def rerank(
        self, items: list[RerankItem], *, deadline_s: float, **_: Any
    ) -> list[RerankResult]:
        self.deadlines.append(deadline_s)
        self.entered.set()
        out = self.behaviour(items, deadline_s)
        return (await out) if asyncio.iscoroutine(out) else out  # type: ignore[no-any-return]


def _escalation(tmp: Path, client: FakeClient, **kw: Any) -> Escalation:
    budget = BudgetStore(tmp / "budget", COST, clock=lambda: 1_000_000.0)
    monitor = ConnectivityMonitor(BreakerSettings(), clock=lambda: 0.0)
    return Escalation(client, monitor, budget, EdgeMetrics(), clock=lambda: 1_000_000.0, **kw)  # type: ignore[arg-type]


def _calls(n: int = 2) -> list[Call]:
    return [
        Call(
            RerankItem(task="digits", request_id=f"r{i}", candidates=["1", "2"]),
            "digits",
            limits_for(COST),
            COST.price_per_call,
        )
        for i in range(n)
    ]


def _answers(items: list[RerankItem], _: float) -> list[RerankResult]:
    return [
        RerankResult(
            request_id=i.request_id,
            task=i.task,
            label="1",
            score=0.9,
            candidates=[WireCandidate(label="1", score=0.9)],
            model_version="c1",
            scored="candidates",
        )
        for i in items
    ]


def test_a_client_bug_releases_every_reservation_and_counts_a_breaker_failure(
    tmp_path: Path,
) -> None:
    """An exception that is not a CloudError propagates, after the reservations are given
    back and the breaker counts one failure."""

    def broken(items: list[RerankItem], _: float) -> list[RerankResult]:
        raise RuntimeError("bug in the client")

    esc = _escalation(tmp_path, FakeClient(broken))
    with pytest.raises(RuntimeError, match="bug in the client"):
        asyncio.run(esc.run(_calls(), deadline_s=1.0))
    assert esc.budget.snapshot().calls == 0
    assert esc.monitor.snapshot().consecutive_failures == 1


def test_cancelled_during_the_cloud_call_releases_and_leaves_the_breaker(tmp_path: Path) -> None:
    """A cancellation while the cloud call is in flight gives every reservation back and
    moves the breaker neither way."""

    async def hang(items: list[RerankItem], _: float) -> list[RerankResult]:
        await asyncio.Event().wait()
        return []

    client = FakeClient(hang)
    esc = _escalation(tmp_path, client)

    async def scenario() -> None:
        task = asyncio.create_task(esc.run(_calls(), deadline_s=1.0, off_loop=True))
        await client.entered.wait()
        assert esc.budget.snapshot().calls == 2  # both reserved before the call
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert esc.budget.snapshot().calls == 0
    snap = esc.monitor.snapshot()
    assert (snap.consecutive_failures, snap.breaker) == (0, "closed")


def test_cancelled_while_reserving_off_the_loop_gives_the_reservations_back(
    tmp_path: Path,
) -> None:
    """A run cancelled while its worker thread is still reserving propagates the
    cancellation at once; the reservations the thread then makes are released, none sent."""
    client = FakeClient(_answers)
    esc = _escalation(tmp_path, client)
    inside, proceed = threading.Event(), threading.Event()
    reserve_all = esc._reserve_all
    made: list[Any] = []

    def slow_reserve_all(calls: list[Call], now: float) -> Any:
        inside.set()
        proceed.wait(10)
        made.extend(reserve_all(calls, now))
        return made

    esc._reserve_all = slow_reserve_all  # type: ignore[method-assign]

    async def scenario() -> None:
        task = asyncio.create_task(esc.run(_calls(), deadline_s=1.0, off_loop=True))
        await until(inside.is_set, what="the worker thread reserving")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        proceed.set()
        await until(lambda: len(made) == 2 and all(r.state == "released" for r in made),
                    what="the late reservations given back")  # fmt: skip

    asyncio.run(scenario())
    assert esc.budget.snapshot().calls == 0 and client.deadlines == []


def test_the_time_reservations_take_comes_off_the_cloud_calls_deadline(tmp_path: Path) -> None:
    """`deadline_s` counts from the start of the run: 0.3 s spent reserving leaves the
    cloud call 0.7 s of a 1 s deadline."""
    ticks = iter([10.0, 10.3, 10.5])
    client = FakeClient(_answers)
    esc = _escalation(tmp_path, client, monotonic=lambda: next(ticks))
    settled = asyncio.run(esc.run(_calls(1), deadline_s=1.0))
    assert [s.outcome for s in settled] == ["answered"]
    assert client.deadlines == [pytest.approx(0.7)]
    assert esc.budget.snapshot().calls == 1
