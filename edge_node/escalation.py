"""One budgeted cloud call: the step every escalation takes, live or from the queue.

`Escalation.run(calls)` carries out, in order: the breaker check (one for the call), a
budget reservation per item, one `rerank` call for the reserved items, the settlement of
each item's charge and the breaker's update. What each outcome means for the charge and
the breaker is decided by the pure rules of `router.outcome` (`settle`, `breaker_effect`),
so the live path (`edge_node.service`) and the sync worker (`edge_node.sync.worker`)
charge and count the same outcome the same way; what each outcome means for a request is
`router.outcome.after`, applied by the caller.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import structlog

from edge_node.cloud.client import CloudClient
from edge_node.cloud.connectivity import ConnectivityMonitor
from edge_node.observe.metrics import EdgeMetrics
from edge_node.storage.budget_store import BudgetStore, BudgetStoreError, Reservation
from router.budget import BudgetLedger, Limit
from router.errors import CloudError, CloudTimeout
from router.outcome import Outcome, breaker_effect, item_outcome, settle
from router.wire import RerankFailure, RerankItem, RerankResult

log = structlog.get_logger("edgeroute.edge")
T = TypeVar("T")


@dataclass(slots=True)
class Call:
    """One item to send: its wire item, its node task (for metrics) and the budget limits
    and price its charge is reserved against."""

    item: RerankItem
    task: str
    limits: tuple[Limit, ...]
    price: float


@dataclass(slots=True)
class Settled:
    """How one item's escalation ended. `outcome` is what `router.outcome.after` reads;
    `result` is the cloud's answer (`answered` only); `budget` names the exhausted budget
    (`budget_exhausted` only); `error` is the whole call's error, `code`/`message` the
    cloud's per-item or call error (failures only)."""

    outcome: Outcome
    result: RerankResult | None = None
    budget: str | None = None
    error: CloudError | None = None
    code: str | None = None
    message: str | None = None


class Escalation:
    """The one escalation step (see module doc). Use from one event loop; several runs
    may be in flight at once (the budget store and the client are safe for that)."""

    def __init__(
        self,
        client: CloudClient,
        monitor: ConnectivityMonitor,
        budget: BudgetStore,
        metrics: EdgeMetrics,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.client = client
        self.monitor = monitor
        self.budget = budget
        self.metrics = metrics
        self._clock = clock
        self._monotonic = monotonic
        self.calls = 0

    async def run(
        self,
        calls: Sequence[Call],
        *,
        deadline_s: float,
        request_id: str | None = None,
        off_loop: bool = False,
        resend: bool = False,
        now: float | None = None,
    ) -> list[Settled]:
        """Escalate `calls` in one cloud call; one `Settled` per call, in order.

        `off_loop` runs the budget's disk steps in a worker thread (the sync worker's
        choice: a drain must not stall live requests); the live path reserves on the loop.
        `resend` says the items may have been sent before (queued items: the client then
        never marks the call a first send). `now` is the time budgets are counted at
        (default: the clock). `deadline_s` counts from the call of `run`: the time the
        reservations take is taken from what the cloud call gets. Every reservation is
        settled before this returns or raises, also when the run is cancelled (while the
        reservations are being made off the loop, they are given back once the worker
        thread has made them). Raises only what the client raises beyond `CloudError` (a
        bug; counted as a breaker failure) and `BudgetStoreError`.
        """
        started = self._monotonic()
        if not self.monitor.allow_request():
            return [Settled("breaker_refused") for _ in calls]
        at = self._clock() if now is None else now
        if off_loop:
            held = await self._reserve_off_loop(calls, at)
        else:
            held = self._reserve_all(calls, at)
        out: list[Settled] = [s if isinstance(s, Settled) else Settled("answered") for s in held]
        sent = [(i, r) for i, r in enumerate(held) if not isinstance(r, Settled)]
        if not sent:
            return out
        t_call = self._monotonic()
        try:
            results = await self.client.rerank(
                [calls[i].item for i, _ in sent],
                deadline_s=deadline_s - (t_call - started),
                request_id=request_id,
                resend=resend,
            )
        except BaseException as exc:
            await self._off(off_loop, lambda: [r.release() for _, r in sent])
            if not isinstance(exc, CloudError):
                if isinstance(exc, Exception):
                    self.monitor.record_failure()
                raise
            self._breaker(exc)
            outcome: Outcome = "cloud_timeout" if isinstance(exc, CloudTimeout) else "cloud_error"
            for i, _ in sent:
                self.metrics.cloud_errors.labels(calls[i].task, exc.code).inc()
                out[i] = Settled(outcome, error=exc, code=exc.code, message=exc.message)
            log.warning(
                "cloud_failed", request_id=calls[sent[0][0]].item.request_id, reason=exc.code,
                items=len(sent),
            )  # fmt: skip
            return out
        finally:
            self.metrics.cloud_seconds.observe(self._monotonic() - t_call)
        self._breaker(None)
        self.calls += 1
        releases = any(settle(res) == "release" for res in results)
        await self._off(off_loop and releases, lambda: self._settle_all(sent, results))
        for (i, _), res in zip(sent, results, strict=True):
            out[i] = self._settled(calls[i], res)
        return out

    async def _reserve_off_loop(
        self, calls: Sequence[Call], now: float
    ) -> list[Reservation | Settled]:
        """`_reserve_all` in a worker thread. If the waiting task is cancelled, the
        reservations are given back whatever happens to the loop afterwards: by the worker
        thread itself when it finishes after the cancellation, else (it had finished) here
        before the cancellation propagates."""
        lock = threading.Lock()
        state: dict[str, object] = {}

        def reserve() -> list[Reservation | Settled]:
            held = self._reserve_all(calls, now)
            with lock:
                state["held"] = held
                abandoned = "abandoned" in state
            if abandoned:
                _release_quietly([r for r in held if not isinstance(r, Settled)])
            return held

        try:
            return await asyncio.to_thread(reserve)
        except asyncio.CancelledError:
            with lock:
                state["abandoned"] = True
                done = state.get("held")
            if isinstance(done, list):
                _release_quietly([r for r in done if not isinstance(r, Settled)])
            raise

    def _reserve_all(self, calls: Sequence[Call], now: float) -> list[Reservation | Settled]:
        """One reservation (or its refusal, naming the exhausted budget) per call, all in
        one atomic write of the budget store."""
        held = self.budget.reserve_many(now, [(c.limits, c.price) for c in calls])
        if all(h is not None for h in held):
            return held  # type: ignore[return-value]
        ledger = self.budget.known_ledger()
        return [
            h if h is not None else Settled("budget_exhausted", budget=_spent(ledger, c, now))
            for h, c in zip(held, calls, strict=True)
        ]

    @staticmethod
    def _settle_all(
        sent: list[tuple[int, Reservation]], results: list[RerankResult | RerankFailure]
    ) -> None:
        for (_, held), res in zip(sent, results, strict=True):
            if settle(res) == "commit":
                held.commit()
            else:
                held.release()

    def _settled(self, call: Call, res: RerankResult | RerankFailure) -> Settled:
        if isinstance(res, RerankResult):
            return Settled("answered", result=res)
        code, message = res.error.code, res.error.message
        self.metrics.cloud_errors.labels(call.task, code).inc()
        outcome = item_outcome(code)
        return Settled(outcome, code=code, message=message)

    def _breaker(self, error: CloudError | None) -> None:
        effect = breaker_effect(error)
        if effect == "success":
            self.monitor.record_success()
        elif effect == "credentials_rejected":
            self.monitor.record_credentials_rejected()
        else:
            self.monitor.record_failure(error.retry_after_s if error is not None else None)

    @staticmethod
    async def _off(off_loop: bool, fn: Callable[[], T]) -> T:
        return await asyncio.to_thread(fn) if off_loop else fn()


def _release_quietly(held: list[Reservation]) -> None:
    """Release `held` where no caller waits for the outcome: a store failure is logged
    (the reservations then stay spent, which never overspends)."""
    try:
        for r in held:
            r.release()
    except BudgetStoreError as exc:
        log.warning("budget_release_failed", reason=exc.code, items=len(held))


def _spent(ledger: BudgetLedger, call: Call, now: float) -> str | None:
    """The budget a refused call found exhausted."""
    return ledger.exhausted(call.limits, call.price, now)
