"""The background worker that drains the durable queue to the cloud re-ranker.

One round (`run_once`):
1. items older than `queue.ttl_s` are recorded as `expired` in the result store, then
   removed from the queue;
2. if the connectivity monitor refuses calls, nothing else happens;
3. the oldest `sync.batch_size` items are sent in one `rerank` call; each result is stored
   as `done` BEFORE its item leaves the queue (a crash in between re-sends it; the cloud
   is idempotent by request_id), so no acknowledged item is ever lost;
4. a per-item `RerankFailure` or a whole-call `CloudRejected` counts one attempt per item;
   after `sync.max_attempts` the item is dead-lettered (`failed`, with its last error);
5. retryable cloud errors (unreachable, timeout, overload) leave the items untouched and
   only feed the monitor.

Order: items leave in enqueue order (one FIFO for every task, so each task's items go
oldest first); a batch holds at most `sync.batch_size` items. Pacing: with
`sync.max_bytes_per_s` set, a round that sent B payload bytes is followed by a pause that
keeps the drain at or below that rate, so a backlog after a long outage leaves CPU and
link to live traffic. Cost: with a `reserve` hook (the node's budget ledger), every item is
charged before it is sent; fresh cloud results commit the charge, cached ones (the cloud
had already computed and charged that id) and failures give it back; an item that finds
the budget exhausted waits in the queue for a later round.

`run_forever` repeats rounds until `stop` is set, pausing `sync.interval_ms` when a round
sent nothing, and sends `GET /healthz` probes while the breaker is open so the node comes
back online without live traffic. It never dies on an exception (logged, next round).
Logs carry request_id / task / route / reason, never inputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import structlog
from pydantic import ValidationError

from edge_node.connectivity import ConnectivityMonitor
from edge_node.queue_store import DurableQueue, QueuedItem
from edge_node.result_store import ResultStore
from router.errors import CloudError
from router.policy import SyncSettings
from router.wire import INPUTS_REQUIRED, RerankFailure, RerankItem, RerankResult

SYNCED = "synced"
EXPIRED_TTL = "ttl_expired"


class RerankClient(Protocol):
    """What the worker needs from `edge_node.cloud_client.CloudClient`."""

    async def rerank(
        self, items: list[RerankItem], *, deadline_s: float, request_id: str | None = None
    ) -> list[RerankResult | RerankFailure]: ...

    async def health(self, timeout_s: float) -> bool: ...


class Charge(Protocol):
    """One reserved unit of budget (`edge_node.budget_store.Reservation`)."""

    def commit(self) -> None: ...

    def release(self) -> bool: ...


Reserve = Callable[[QueuedItem], Charge | None]
"""Reserve the budget for one cloud re-rank of an item; None when exhausted."""


@dataclass(frozen=True, slots=True)
class SyncReport:
    """What one round did. `sent`: items sent to the cloud; `done`: results stored;
    `failed`: items that got an attempt counted; `dead`: items dead-lettered;
    `expired`: items expired by ttl; `skipped_offline`: the monitor refused the call."""

    sent: int = 0
    done: int = 0
    failed: int = 0
    dead: int = 0
    expired: int = 0
    skipped_offline: bool = False
    bytes_sent: int = 0
    pace_s: float = 0.0
    over_budget: int = 0


class SyncWorker:
    """Drains `queue` into `results` through `client`, guarded by `monitor`.

    `clock` is wall-clock seconds (the queue's `enqueued_at` scale); `sleep` awaits
    seconds; `deadline_s` bounds one rerank call including its retries;
    `probe_timeout_s` bounds one health probe. Run one worker per queue; its methods must
    be called from one event loop.
    """

    def __init__(
        self,
        queue: DurableQueue,
        results: ResultStore,
        client: RerankClient,
        monitor: ConnectivityMonitor,
        sync: SyncSettings,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        log: Any = None,
        deadline_s: float = 5.0,
        probe_timeout_s: float = 1.0,
        reserve: Reserve | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._queue = queue
        self._results = results
        self._client = client
        self._monitor = monitor
        self._sync = sync
        self._clock = clock
        self._sleep = sleep
        self._log = log if log is not None else structlog.get_logger("edge_node.sync")
        self._deadline_s = deadline_s
        self._probe_timeout_s = probe_timeout_s
        self._reserve = reserve
        self._monotonic = monotonic

    # --- one round --------------------------------------------------------------------

    async def run_once(self) -> SyncReport:
        """One drain round (see module doc). Raises only storage errors."""
        expired = self._expire()
        items = self._queue.oldest(self._sync.batch_size)
        if not items:
            return SyncReport(expired=expired)
        if not self._monitor.allow_request():
            return SyncReport(expired=expired, skipped_offline=True)
        wire: list[RerankItem] = []
        sendable: list[QueuedItem] = []
        charges: list[Charge | None] = []
        failed = dead = over_budget = 0
        for item in items:
            try:
                w = RerankItem(
                    task=item.cloud_task,
                    request_id=item.request_id,
                    inputs=item.inputs,
                    candidates=item.candidates or None,
                )
            except ValidationError as exc:
                failed += 1
                dead += self._attempt_failed(
                    item, f"invalid_item: {exc.error_count()} schema errors", force_dead=True
                )
                continue
            charge = self._reserve(item) if self._reserve is not None else None
            if self._reserve is not None and charge is None:
                over_budget += 1  # budget exhausted: stays queued for a later round
                continue
            wire.append(w)
            sendable.append(item)
            charges.append(charge)
        if not wire:
            return SyncReport(failed=failed, dead=dead, expired=expired, over_budget=over_budget)
        body_bytes = sum(len(orjson.dumps(w.model_dump(mode="json"))) for w in wire)
        started = self._monotonic()
        try:
            results = await self._client.rerank(wire, deadline_s=self._deadline_s)
        except BaseException as exc:
            for c in charges:
                if c is not None:
                    c.release()
            if not isinstance(exc, CloudError):
                if isinstance(exc, Exception):
                    self._monitor.record_failure()  # an unexpected client bug counts too
                raise
            pace = self._pace_s(body_bytes, self._monotonic() - started)
            report = SyncReport(
                sent=len(wire),
                failed=failed,
                dead=dead,
                expired=expired,
                over_budget=over_budget,
                bytes_sent=body_bytes,
                pace_s=pace,
            )
            if exc.retryable:
                self._monitor.record_failure(exc.retry_after_s)
                self._log.warning(
                    "sync_cloud_unavailable", route="cloud", reason=exc.code, items=len(wire)
                )
                return report
            self._monitor.record_success()  # the cloud answered; it refused the batch
            for item in sendable:
                failed += 1
                dead += self._attempt_failed(item, f"{exc.code}: {exc.message}")
            return dataclasses.replace(report, failed=failed, dead=dead)
        pace = self._pace_s(body_bytes, self._monotonic() - started)
        return self._store_results(
            sendable, results, charges, failed, dead, expired, over_budget, body_bytes, pace
        )

    def _pace_s(self, nbytes: int, spent_s: float) -> float:
        """The pause after sending `nbytes` in `spent_s` that keeps the drain at or below
        `sync.max_bytes_per_s` (0.0 when unpaced)."""
        rate = self._sync.max_bytes_per_s
        return 0.0 if rate is None else max(0.0, nbytes / rate - spent_s)

    def _store_results(
        self,
        sendable: list[QueuedItem],
        results: list[RerankResult | RerankFailure],
        charges: list[Charge | None],
        failed: int,
        dead: int,
        expired: int,
        over_budget: int,
        body_bytes: int,
        pace: float,
    ) -> SyncReport:
        """Results stored durably first, charges settled, then the items leave the queue."""
        self._monitor.record_success()
        done_ids: list[str] = []
        for item, res, charge in zip(sendable, results, charges, strict=True):
            if isinstance(res, RerankResult):
                self._results.put_done(item.request_id, _done_record(item, res))
                done_ids.append(item.request_id)
                if charge is not None and res.cached:
                    charge.release()
                elif charge is not None:
                    charge.commit()
                self._log.info(
                    "sync_done",
                    request_id=item.request_id,
                    task=item.task,
                    route="cloud",
                    reason=SYNCED,
                )
            else:
                if charge is not None:
                    charge.release()
                failed += 1
                dead += self._attempt_failed(
                    item,
                    f"{res.error.code}: {res.error.message}",
                    force_dead=res.error.code == INPUTS_REQUIRED,  # a retry cannot succeed
                )
        self._queue.remove(done_ids)
        return SyncReport(
            sent=len(sendable),
            done=len(done_ids),
            failed=failed,
            dead=dead,
            expired=expired,
            bytes_sent=body_bytes,
            pace_s=pace,
            over_budget=over_budget,
        )

    def _expire(self) -> int:
        items = self._queue.expired(self._clock())
        for item in items:
            self._results.put_expired(item.request_id, EXPIRED_TTL)
            self._log.info(
                "sync_expired",
                request_id=item.request_id,
                task=item.task,
                route="queued",
                reason=EXPIRED_TTL,
            )
        return self._queue.remove(i.request_id for i in items)

    def _attempt_failed(self, item: QueuedItem, error: str, *, force_dead: bool = False) -> int:
        """Count an attempt; dead-letter the item when out of attempts. Returns 1 if it
        was dead-lettered, else 0."""
        attempts = self._queue.record_failure(item.request_id, error)
        if not force_dead and attempts < self._sync.max_attempts:
            self._log.info(
                "sync_attempt_failed",
                request_id=item.request_id,
                task=item.task,
                route="cloud",
                reason="cloud_item_error",
                attempts=attempts,
            )
            return 0
        self._results.put_failed(item.request_id, error)
        self._queue.remove([item.request_id])
        self._log.warning(
            "sync_dead_letter",
            request_id=item.request_id,
            task=item.task,
            route="cloud",
            reason="max_attempts",
            attempts=attempts,
        )
        return 1

    # --- health probes and the loop ---------------------------------------------------

    async def probe(self) -> bool | None:
        """Send one health probe if the monitor says one is due and record its outcome;
        returns the outcome, or None when no probe was due."""
        if not self._monitor.probe_due() or not self._monitor.allow_request():
            return None
        try:
            ok = await self._client.health(self._probe_timeout_s)
        except Exception:
            ok = False
        if ok:
            self._monitor.record_success()
            self._log.info("cloud_back_online", route="cloud", reason="probe_ok")
        else:
            self._monitor.record_failure()
        return ok

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Run rounds until `stop` is set; pause `interval_ms` (or until `stop`) after a
        round that stored no result (nothing queued, offline, cloud errors) or raised, and
        the round's `pace_s` after a busy round (`sync.max_bytes_per_s`).
        Never raises except on cancellation."""
        interval = self._sync.interval_ms / 1000
        while not stop.is_set():
            busy = False
            pace = 0.0
            try:
                await self.probe()
                report = await self.run_once()
                busy = report.done > 0
                pace = report.pace_s
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._log.exception("sync_round_failed", reason=type(exc).__name__)
            if not busy:
                await self._pause(stop, interval)
            elif pace > 0:
                await self._pause(stop, pace)

    async def _pause(self, stop: asyncio.Event, seconds: float) -> None:
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (sleeper, stopper):
                if not fut.done():
                    fut.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await fut


def _done_record(item: QueuedItem, res: RerankResult) -> dict[str, Any]:
    """The final result stored for a synced item (no inputs)."""
    return {
        "request_id": item.request_id,
        "task": item.task,
        "cloud_task": res.task,
        "label": res.label,
        "score": res.score,
        "candidates": [{"label": c.label, "score": c.score} for c in res.candidates],
        "model_version": res.model_version,
        "scored": res.scored,
        "route": "cloud",
        "reason": SYNCED,
        "edge_label": item.edge_label,
        "edge_score": item.edge_score,
        "edge_model_version": item.model_version,
    }
