"""The background worker that drains the durable queue to the cloud re-ranker.

One round (`run_once`):
1. items older than `queue.ttl_s` are recorded as `expired` in the result store, then
   removed from the queue;
2. if the connectivity monitor refuses calls, nothing else happens;
3. the oldest `sync.batch_size` items are sent in one `rerank` call; the batch's results
   are stored as `done` in one transaction BEFORE its items leave the queue (in a second
   one): a crash in between leaves results stored and items queued, which the next round
   re-sends (the cloud is idempotent by request_id) and removes, so no acknowledged item
   is ever lost;
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

`drain` runs rounds back to back, pipelined: round N+1 is read, budgeted and sent while
round N's results are stored, never touching round N's items (see `drain` for what it
keeps). `run_forever` drains until `stop` is set, pausing `sync.interval_ms` when a drain
ends (a round stored nothing: nothing queued, offline, cloud errors), and sends
`GET /healthz` probes while the breaker is open so the node comes back online without
live traffic. It never dies on an exception (logged, next drain).
Logs carry request_id / task / route / reason, never inputs.

Live traffic first: every disk step of a round (expiry, reading the batch, budget
reservations, storing results) runs in a worker thread (`asyncio.to_thread`), so SQLite
commits and WAL checkpoints never stall the event loop that answers live requests.
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

from edge_node.cloud.connectivity import ConnectivityMonitor
from edge_node.observe.decision_log import SYNCED_REASON
from edge_node.storage.queue_store import DurableQueue, QueuedItem
from edge_node.storage.result_store import ResultStore
from router.errors import CloudError
from router.policy import SyncSettings
from router.wire import INPUTS_REQUIRED, RerankFailure, RerankItem, RerankResult

SYNCED = SYNCED_REASON
EXPIRED_TTL = "ttl_expired"


class RerankClient(Protocol):
    """What the worker needs from `edge_node.cloud.client.CloudClient`."""

    async def rerank(
        self, items: list[RerankItem], *, deadline_s: float, request_id: str | None = None
    ) -> list[RerankResult | RerankFailure]: ...

    async def health(self, timeout_s: float) -> bool: ...


class Charge(Protocol):
    """One reserved unit of budget (`edge_node.storage.budget_store.Reservation`)."""

    def commit(self) -> None: ...

    def release(self) -> bool: ...


Reserve = Callable[[QueuedItem], Charge | None]
"""Reserve the budget for one cloud re-rank of an item; None when exhausted."""


@dataclass(frozen=True, slots=True)
class SyncReport:
    """What one round did. `sent`: items sent to the cloud; `done`: results stored;
    `failed`: items that got an attempt counted; `dead`: items dead-lettered;
    `expired`: items expired by ttl; `skipped_offline`: the monitor refused the call;
    `bytes_sent`: the items' JSON bytes, counted only when `sync.max_bytes_per_s` paces
    the drain (else 0); `pace_s`: the pause asked for after this round."""

    sent: int = 0
    done: int = 0
    failed: int = 0
    dead: int = 0
    expired: int = 0
    skipped_offline: bool = False
    bytes_sent: int = 0
    pace_s: float = 0.0
    over_budget: int = 0


@dataclass(slots=True)
class _Batch:
    """The items of one round that go on the wire, with their reserved charges."""

    wire: list[RerankItem] = dataclasses.field(default_factory=list)
    sendable: list[QueuedItem] = dataclasses.field(default_factory=list)
    charges: list[Charge | None] = dataclasses.field(default_factory=list)
    failed: int = 0
    dead: int = 0
    over: int = 0
    nbytes: int = 0


@dataclass(frozen=True, slots=True)
class _Sent:
    """A batch the cloud answered: its results wait to be stored; `report` is the round's
    report before storing (no `done` yet)."""

    batch: _Batch
    results: list[RerankResult | RerankFailure]
    report: SyncReport


def _add(a: SyncReport, b: SyncReport) -> SyncReport:
    """Two rounds' reports summed; `skipped_offline` is b's."""
    return SyncReport(
        sent=a.sent + b.sent,
        done=a.done + b.done,
        failed=a.failed + b.failed,
        dead=a.dead + b.dead,
        expired=a.expired + b.expired,
        skipped_offline=b.skipped_offline,
        bytes_sent=a.bytes_sent + b.bytes_sent,
        pace_s=a.pace_s + b.pace_s,
        over_budget=a.over_budget + b.over_budget,
    )


def _release_all(charges: list[Charge | None]) -> None:
    for c in charges:
        if c is not None:
            c.release()


class SyncWorker:
    """Drains `queue` into `results` through `client`, guarded by `monitor`.

    `clock` is wall-clock seconds (the queue's `enqueued_at` scale); `sleep` awaits
    seconds; `deadline_s` bounds one rerank call including its retries;
    `probe_timeout_s` bounds one health probe. Run one worker per queue; its methods must
    be called from one event loop, one `run_once` / `drain` / `run_forever` at a time (a
    drain's in-flight items are known to that drain only). `queue`, `results`, `reserve`,
    `clock` and `log` are also used from worker threads (two at a time while `drain`
    pipelines rounds), so they must be thread-safe (the stores and the budget ledger are);
    `client` and `monitor` are only used on the loop. `sample()` says whether to write an
    item's `sync_done` line (the node's per-request sampler; called from worker threads);
    expiries, failures and dead letters are always logged. `on_synced(done)` is called
    (from a worker thread) with the items and cloud results of each round once their
    results are stored, e.g. to write `kind: sync` decision records
    (`decision_log.sync_recorder`); an exception from it is logged, never fails the round.
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
        sample: Callable[[], bool] = lambda: True,
        on_synced: Callable[[list[tuple[QueuedItem, RerankResult]]], None] | None = None,
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
        self._sample = sample
        self._on_synced = on_synced

    # --- one round --------------------------------------------------------------------

    async def run_once(self) -> SyncReport:
        """One drain round (see module doc). Raises only storage errors.

        Every disk step (expiry, reading the batch, reserving budget, storing results)
        runs in a worker thread, so the event loop keeps answering live requests while
        SQLite commits or checkpoints; the cloud call and the monitor stay on the loop."""
        out = await self._send_round(frozenset())
        return out if isinstance(out, SyncReport) else await self._store(out)

    async def _send_round(self, in_flight: frozenset[str]) -> SyncReport | _Sent:
        """A round up to and including the cloud call, over the queued items that are not
        in `in_flight` (steps 1-5 of the module doc): the round's final report when there
        is nothing to store (nothing queued, offline, nothing sendable, a cloud error),
        else the answered batch, whose results `_store` must store. Every charge of a
        batch that is not returned is given back, whatever is raised."""
        expired, items = await asyncio.to_thread(self._expire_and_read, in_flight)
        if not items:
            return SyncReport(expired=expired)
        if not self._monitor.allow_request():
            return SyncReport(expired=expired, skipped_offline=True)
        batch = await asyncio.to_thread(self._prepare, items)
        if not batch.wire:
            return SyncReport(
                failed=batch.failed, dead=batch.dead, expired=expired, over_budget=batch.over
            )
        started = self._monotonic()
        try:
            results = await self._client.rerank(batch.wire, deadline_s=self._deadline_s)
        except BaseException as exc:
            await asyncio.to_thread(_release_all, batch.charges)
            if not isinstance(exc, CloudError):
                if isinstance(exc, Exception):
                    self._monitor.record_failure()  # an unexpected client bug counts too
                raise
            report = SyncReport(
                sent=len(batch.wire),
                failed=batch.failed,
                dead=batch.dead,
                expired=expired,
                over_budget=batch.over,
                bytes_sent=batch.nbytes,
                pace_s=self._pace_s(batch.nbytes, self._monotonic() - started),
            )
            if exc.retryable:
                self._monitor.record_failure(exc.retry_after_s)
                self._log.warning(
                    "sync_cloud_unavailable", route="cloud", reason=exc.code, items=len(batch.wire)
                )
                return report
            self._monitor.record_success()  # the cloud answered; it refused the batch
            dead = await asyncio.to_thread(
                self._fail_all, batch.sendable, f"{exc.code}: {exc.message}"
            )
            return dataclasses.replace(
                report, failed=report.failed + len(batch.sendable), dead=report.dead + dead
            )
        pace = self._pace_s(batch.nbytes, self._monotonic() - started)
        self._monitor.record_success()
        report = SyncReport(
            sent=len(batch.sendable),
            failed=batch.failed,
            dead=batch.dead,
            expired=expired,
            bytes_sent=batch.nbytes,
            pace_s=pace,
            over_budget=batch.over,
        )
        return _Sent(batch, results, report)

    async def _store(self, sent: _Sent) -> SyncReport:
        """Settle the charges of an answered batch and store its results (step 3-4 of the
        module doc, in a worker thread that runs to its end even if the caller is
        cancelled); returns the round's report."""
        failed, dead, done = await asyncio.to_thread(self._store_results, sent.batch, sent.results)
        r = sent.report
        return dataclasses.replace(r, done=done, failed=r.failed + failed, dead=r.dead + dead)

    # --- pipelined rounds -------------------------------------------------------------

    async def drain(self, stop: asyncio.Event | None = None) -> SyncReport:
        """Rounds back to back, pipelined, until a round stores no result (nothing
        queued, offline, nothing sendable within the budget, a cloud error, only
        per-item failures) or `stop` is set; returns the rounds' reports summed
        (`skipped_offline`: the last round's; the pauses asked for between rounds are
        taken by `drain` itself).

        Pipelining: while round N's results are stored in a worker thread (results
        committed, then the items removed: the module doc's order, per batch), round
        N+1 is read, budgeted and sent. Guarantees:
        - round N+1 never reads, sends or expires an item of round N (its request_ids
          are excluded until round N's store has returned), so no item is in flight
          twice; items of round N that failed are read again from round N+2 on;
        - round N+1's store starts only after round N's has returned (one store at a
          time, in order); if round N's store raises, or the drain is cancelled while
          waiting for it, round N+1's answered results are still stored (their charges
          settled; after a cancellation the two stores may overlap, which the
          thread-safe stores allow) before the error propagates;
        - a crash at any point loses nothing: every batch keeps the result-then-removal
          order of `run_once`, and an item sent but not stored stays queued and is
          re-sent (the cloud is idempotent by request_id);
        - pacing: after a round that sent B bytes in t seconds, the next round starts
          no sooner than B / `sync.max_bytes_per_s` - t seconds later (the pause
          overlaps the store).

        Raises storage errors (after waiting for the store in progress) and
        cancellation; unexpected client errors as `run_once` does."""
        total = SyncReport()
        storing: asyncio.Future[SyncReport] | None = None
        in_flight: frozenset[str] = frozenset()
        try:
            while stop is None or not stop.is_set():
                out = await self._send_round(in_flight)
                if isinstance(out, SyncReport):
                    total = _add(total, out)
                    break
                prev, storing = storing, None
                try:
                    if prev is not None:
                        total = _add(total, await prev)
                finally:  # stored even if `prev` failed: its charges must be settled
                    in_flight = frozenset(i.request_id for i in out.batch.sendable)
                    storing = asyncio.ensure_future(self._store(out))
                if not any(isinstance(r, RerankResult) for r in out.results):
                    break  # nothing will be stored as done: the drain ends here
                if out.report.pace_s > 0:
                    await self._pause_or_sleep(stop, out.report.pace_s)
        except BaseException:
            if storing is not None:
                try:
                    await storing
                except Exception as exc:  # the first error wins; this one is logged
                    self._log.error("sync_store_failed", reason=type(exc).__name__)
            raise
        if storing is not None:
            total = _add(total, await storing)
        return total

    async def _pause_or_sleep(self, stop: asyncio.Event | None, seconds: float) -> None:
        if stop is None:
            await self._sleep(seconds)
        else:
            await self._pause(stop, seconds)

    def _expire_and_read(self, in_flight: frozenset[str]) -> tuple[int, list[QueuedItem]]:
        """Expire items past their ttl, then read the next batch (worker thread); items in
        `in_flight` are neither expired nor read."""
        expired = self._expire(in_flight)
        return expired, self._queue.oldest(self._sync.batch_size, exclude=in_flight)

    def _prepare(self, items: list[QueuedItem]) -> _Batch:
        """The wire items of a round, each with its budget reserved (worker thread).
        Items that fail the wire schema are dead-lettered; over-budget items stay queued."""
        batch = _Batch()
        for item in items:
            try:
                w = RerankItem(
                    task=item.cloud_task,
                    request_id=item.request_id,
                    inputs=item.inputs,
                    candidates=item.candidates or None,
                )
            except ValidationError as exc:
                batch.failed += 1
                batch.dead += self._attempt_failed(
                    item, f"invalid_item: {exc.error_count()} schema errors", force_dead=True
                )
                continue
            charge = self._reserve(item) if self._reserve is not None else None
            if self._reserve is not None and charge is None:
                batch.over += 1  # budget exhausted: stays queued for a later round
                continue
            batch.wire.append(w)
            batch.sendable.append(item)
            batch.charges.append(charge)
        if self._sync.max_bytes_per_s is not None:  # serializing costs; only pacing needs it
            batch.nbytes = sum(len(orjson.dumps(w.model_dump(mode="json"))) for w in batch.wire)
        return batch

    def _fail_all(self, items: list[QueuedItem], error: str) -> int:
        """Count one failed attempt for each item (worker thread); returns how many were
        dead-lettered."""
        return sum(self._attempt_failed(item, error) for item in items)

    def _pace_s(self, nbytes: int, spent_s: float) -> float:
        """The pause after sending `nbytes` in `spent_s` that keeps the drain at or below
        `sync.max_bytes_per_s` (0.0 when unpaced)."""
        rate = self._sync.max_bytes_per_s
        return 0.0 if rate is None else max(0.0, nbytes / rate - spent_s)

    def _store_results(
        self, batch: _Batch, results: list[RerankResult | RerankFailure]
    ) -> tuple[int, int, int]:
        """Charges settled, all results stored durably in one transaction, then the synced
        items leave the queue in one transaction (worker thread); returns (failed, dead,
        done). A crash between the two leaves a `done` result with its item still queued:
        the next round re-sends it, the cloud answers from its dedup store (`cached`,
        charge released), the result is stored again and the item leaves."""
        failed = dead = 0
        done: list[tuple[QueuedItem, RerankResult]] = []
        for item, res, charge in zip(batch.sendable, results, batch.charges, strict=True):
            if isinstance(res, RerankResult):
                if charge is not None and res.cached:
                    charge.release()  # the cloud had computed (and we charged) it before
                elif charge is not None:
                    charge.commit()  # computed now: the cost is incurred whatever follows
                done.append((item, res))
                continue
            if charge is not None:
                charge.release()
            failed += 1
            dead += self._attempt_failed(
                item,
                f"{res.error.code}: {res.error.message}",
                force_dead=res.error.code == INPUTS_REQUIRED,  # a retry cannot succeed
            )
        self._results.put_done_many([(i.request_id, _done_record(i, r)) for i, r in done])
        if self._on_synced is not None and done:
            try:
                self._on_synced(done)
            except Exception as exc:  # a record hook never costs a stored result
                self._log.error("sync_record_failed", reason=type(exc).__name__)
        for item, _ in done:
            if not self._sample():
                continue
            self._log.info(
                "sync_done",
                request_id=item.request_id,
                task=item.task,
                route="cloud",
                reason=SYNCED,
            )
        self._queue.remove([item.request_id for item, _ in done])
        return failed, dead, len(done)

    def _expire(self, in_flight: frozenset[str]) -> int:
        items = self._queue.expired(self._clock(), exclude=in_flight)
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
        """Drain (`drain`: pipelined rounds, paced by `sync.max_bytes_per_s`) until
        `stop` is set; after each drain (it ends on a round that stored no result: nothing
        queued, offline, cloud errors) or a drain that raised, pause `interval_ms` (or
        until `stop`). Never raises except on cancellation."""
        interval = self._sync.interval_ms / 1000
        while not stop.is_set():
            try:
                await self.probe()
                await self.drain(stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._log.exception("sync_round_failed", reason=type(exc).__name__)
            await self._pause(stop, interval)

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
