"""The background worker that drains the durable queue to the cloud re-ranker.

One round (`run_once`):
1. items older than `queue.ttl_s` are recorded as `expired` in the result store, then
   removed from the queue;
2. the oldest `sync.batch_size` items are sent through the node's escalation step
   (`edge_node.escalation`: breaker, budget reservation, one `rerank` call, charge
   settlement, breaker update: the same step as live escalations); if the breaker
   refuses the call, nothing else happens;
3. the batch's results
   are stored as `done` in one transaction BEFORE its items leave the queue (in a second
   one): a crash in between leaves results stored and items queued, which the next round
   re-sends (the cloud is idempotent by request_id) and removes, so no acknowledged item
   is ever lost;
4. a per-item `RerankFailure` or a whole-call `CloudRejected` counts one attempt per item;
   after `sync.max_attempts` the item is dead-lettered (`failed`, with its last error);
5. retryable cloud errors (unreachable, timeout, overload) leave the items untouched and
   only feed the monitor; so does a refusal of the node's credentials (401/403,
   `CloudUnauthorized`): the round reports `paused_credentials`, the monitor marks the
   credentials rejected, and the items wait, attempts untouched, until a later round's
   call is accepted (`router.outcome.sync_effect` decides which); while the credentials
   are rejected each round sends one item only, as a probe, not a whole batch.

Order: items leave in enqueue order (one FIFO for every task, so each task's items go
oldest first); a batch holds at most `sync.batch_size` items. Pacing: with
`sync.max_bytes_per_s` set, a round that sent B payload bytes is followed by a pause that
keeps the drain at or below that rate, so a backlog after a long outage leaves CPU and
link to live traffic. Cost: every item is charged before it is sent, against the node's
limits and its task's under the policy in force, and settled by the escalation step's
rules (`router.outcome.settle`: a fresh answer commits, a cached one or a failure gives
the charge back); an item that finds the budget exhausted waits in the queue for a later
round.

`drain` runs rounds back to back, pipelined: round N+1 is read, budgeted and sent while
round N's results are stored, never touching round N's items (see `drain` for what it
keeps). `run_forever` drains until `stop` is set, pausing `sync.interval_ms` when a drain
ends (a round stored nothing: nothing queued, offline, cloud errors), and sends
`GET /healthz` probes while the breaker is open so the node comes back online without
live traffic. It never dies on an exception (logged, next drain).
Logs carry request_id / task / route / reason, never inputs.

Live traffic first: every disk step of a round (expiry, reading the batch, budget
reservations and settlements, storing results) runs in a worker thread
(`asyncio.to_thread`), so SQLite commits and WAL checkpoints never stall the event loop
that answers live requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from pydantic import ValidationError

from edge_node.escalation import Call, Escalation
from edge_node.storage.queue_store import DurableQueue
from edge_node.storage.queued_item import QueuedItem
from edge_node.storage.result_store import ResultStore
from edge_node.sync.bookkeeping import QueueBook
from edge_node.sync.report import AnsweredRound, RoundBatch, SyncReport, add_reports
from router.budget import limits_for
from router.outcome import sync_effect
from router.policy import Policy, SyncSettings
from router.wire import RerankItem, RerankResult


class SyncWorker:
    """Drains `queue` into `results` through `escalation` (the node's escalation step: its
    client, breaker and budget).

    `policy()` is the policy in force (each item is charged against its task's limits
    under it); `clock` is wall-clock seconds (the queue's `enqueued_at` scale); `sleep`
    awaits seconds; `deadline_s` bounds one rerank call including its retries;
    `probe_timeout_s` bounds one health probe. Run one worker per queue; its methods must
    be called from one event loop, one `run_once` / `drain` / `run_forever` at a time (a
    drain's in-flight items are known to that drain only). `queue`, `results`, `clock` and
    `log` are also used from worker threads (two at a time while `drain` pipelines
    rounds), so they must be thread-safe (the stores are). `sample()` says whether to write
    an item's `sync_done` line (the node's per-request sampler; called from worker
    threads); expiries, failures and dead letters are always logged. `on_synced(done)` is
    called (from a worker thread) with the items and cloud results of each round once
    their results are stored, e.g. to write `kind: sync` decision records
    (`decision_log.sync_recorder`); an exception from it is logged, never fails the round.
    """

    def __init__(
        self,
        queue: DurableQueue,
        results: ResultStore,
        escalation: Escalation,
        policy: Callable[[], Policy],
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        log: Any = None,
        deadline_s: float = 5.0,
        probe_timeout_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        sample: Callable[[], bool] = lambda: True,
        on_synced: Callable[[list[tuple[QueuedItem, RerankResult]]], None] | None = None,
    ) -> None:
        self._queue = queue
        self._results = results
        self._escalation = escalation
        self._policy = policy
        self._clock = clock
        self._sleep = sleep
        self._log = log if log is not None else structlog.get_logger("edge_node.sync")
        self._deadline_s = deadline_s
        self._probe_timeout_s = probe_timeout_s
        self._monotonic = monotonic
        self.drains = 0
        self._book = QueueBook(
            queue,
            results,
            clock=clock,
            log=self._log,
            max_attempts=lambda: self._sync.max_attempts,
            sample=sample,
            on_synced=on_synced,
        )

    @property
    def _sync(self) -> SyncSettings:
        return self._policy().sync

    # --- one round --------------------------------------------------------------------

    async def run_once(self) -> SyncReport:
        """One drain round (see module doc). Raises only storage errors.

        Every disk step (expiry, reading the batch, reserving and settling budget,
        storing results) runs in a worker thread, so the event loop keeps answering live
        requests while SQLite commits or checkpoints; the cloud call and the breaker stay
        on the loop."""
        out = await self._send_round(frozenset())
        return out if isinstance(out, SyncReport) else await self._store(out)

    async def _send_round(self, in_flight: frozenset[str]) -> SyncReport | AnsweredRound:
        """A round up to and including the cloud call, over the queued items that are not
        in `in_flight` (steps 1-5 of the module doc): the round's final report when there
        is nothing to store (nothing queued, offline, nothing sendable, a cloud error),
        else the answered batch, whose results `_store` must store. Every charge is
        settled by the escalation step, whatever is raised."""
        size = 1 if self._escalation.monitor.credentials_rejected else self._sync.batch_size
        expired, items, batch = await asyncio.to_thread(self._read_round, in_flight, size)
        if not items:
            return SyncReport(expired=expired)
        if not batch.calls:
            return SyncReport(failed=batch.failed, dead=batch.dead, expired=expired)
        started = self._monotonic()
        settled = await self._escalation.run(
            batch.calls, deadline_s=self._deadline_s, off_loop=True, resend=True
        )
        if all(s.outcome == "breaker_refused" for s in settled):
            return SyncReport(
                failed=batch.failed, dead=batch.dead, expired=expired, skipped_offline=True
            )
        over = sum(s.outcome == "budget_exhausted" for s in settled)
        sent = [
            (item, s)
            for item, s in zip(batch.sendable, settled, strict=True)
            if s.outcome != "budget_exhausted"
        ]
        nbytes = self._nbytes([c for c, s in zip(batch.calls, settled, strict=True)
                               if s.outcome != "budget_exhausted"])  # fmt: skip
        report = SyncReport(
            sent=len(sent),
            failed=batch.failed,
            dead=batch.dead,
            expired=expired,
            over_budget=over,
            bytes_sent=nbytes,
            pace_s=self._pace_s(nbytes, self._monotonic() - started),
        )
        if not sent:
            return report
        error = next((s.error for _, s in sent if s.error is not None), None)
        effect = None if error is None else sync_effect(error)
        if error is not None and effect == "retry_later":
            self._log.warning(
                "sync_cloud_unavailable", route="cloud", reason=error.code, items=len(sent)
            )
            return report
        if error is not None and effect == "pause_credentials":
            self._log.warning("sync_paused", route="cloud", reason=error.code, items=len(sent))
            return dataclasses.replace(report, paused_credentials=True)
        if error is not None:  # the cloud refused the whole call's items
            dead = await asyncio.to_thread(
                self._book.fail_all, [i for i, _ in sent], f"{error.code}: {error.message}"
            )
            return dataclasses.replace(
                report, failed=report.failed + len(sent), dead=report.dead + dead
            )
        return AnsweredRound([i for i, _ in sent], [s for _, s in sent], report)

    async def _store(self, sent: AnsweredRound) -> SyncReport:
        """Settle the charges of an answered batch and store its results (step 3-4 of the
        module doc, in a worker thread that runs to its end even if the caller is
        cancelled); returns the round's report."""
        failed, dead, done = await asyncio.to_thread(
            self._book.store_results, sent.items, sent.settled
        )
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
                    total = add_reports(total, out)
                    break
                prev, storing = storing, None
                try:
                    if prev is not None:
                        total = add_reports(total, await prev)
                finally:  # stored even if `prev` failed: its charges must be settled
                    in_flight = frozenset(i.request_id for i in out.items)
                    storing = asyncio.ensure_future(self._store(out))
                if not any(s.outcome == "answered" for s in out.settled):
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
            total = add_reports(total, await storing)
        return total

    async def _pause_or_sleep(self, stop: asyncio.Event | None, seconds: float) -> None:
        if stop is None:
            await self._sleep(seconds)
        else:
            await self._pause(stop, seconds)

    def _read_round(
        self, in_flight: frozenset[str], size: int
    ) -> tuple[int, list[QueuedItem], RoundBatch]:
        """Expire items past their ttl, read the next batch of up to `size` items and make
        its calls (one worker-thread step); items in `in_flight` are neither expired nor
        read."""
        expired = self._book.expire(in_flight)
        items = self._queue.oldest(size, exclude=in_flight)
        return expired, items, self._prepare(items) if items else RoundBatch()

    def _prepare(self, items: list[QueuedItem]) -> RoundBatch:
        """The calls of a round, one per item, each charged against the node's limits and
        its task's under the policy in force (node limits only if a reload removed the
        task) (worker thread). Items that fail the wire schema are dead-lettered."""
        batch = RoundBatch()
        policy = self._policy()
        cost = policy.cost
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
                batch.dead += self._book.attempt_failed(
                    item, f"invalid_item: {exc.error_count()} schema errors", force_dead=True
                )
                continue
            task = policy.tasks.get(item.task)
            limits = limits_for(cost, task, item.task if task is not None else None)
            batch.calls.append(Call(w, item.task, limits, cost.price_per_call))
            batch.sendable.append(item)
        return batch

    def _nbytes(self, calls: list[Call]) -> int:
        """The calls' JSON bytes when `sync.max_bytes_per_s` paces the drain, else 0
        (serializing costs; only pacing needs it)."""
        if self._sync.max_bytes_per_s is None:
            return 0
        return sum(len(orjson.dumps(c.item.model_dump(mode="json"))) for c in calls)

    def _pace_s(self, nbytes: int, spent_s: float) -> float:
        """The pause after sending `nbytes` in `spent_s` that keeps the drain at or below
        `sync.max_bytes_per_s` (0.0 when unpaced)."""
        rate = self._sync.max_bytes_per_s
        return 0.0 if rate is None else max(0.0, nbytes / rate - spent_s)

    # --- health probes and the loop ---------------------------------------------------

    async def probe(self) -> bool | None:
        """Send one health probe if the monitor says one is due and record its outcome;
        returns the outcome, or None when no probe was due."""
        monitor = self._escalation.monitor
        if not monitor.probe_due() or not monitor.allow_request():
            return None
        try:
            ok = await self._escalation.client.health(self._probe_timeout_s)
        except Exception:
            ok = False
        if ok:
            monitor.record_success(proves_credentials=False)
            self._log.info("cloud_back_online", route="cloud", reason="probe_ok")
        else:
            monitor.record_failure()
        return ok

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Drain (`drain`: pipelined rounds, paced by `sync.max_bytes_per_s`) until
        `stop` is set; after each drain (it ends on a round that stored no result: nothing
        queued, offline, cloud errors) or a drain that raised, pause `interval_ms` (or
        until `stop`). Never raises except on cancellation. `drains` counts the drains
        that ended (in `/v1/status`), so a caller can see the worker ran."""
        interval = self._sync.interval_ms / 1000
        while not stop.is_set():
            try:
                await self.probe()
                await self.drain(stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._log.exception("sync_round_failed", reason=type(exc).__name__)
            self.drains += 1
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
