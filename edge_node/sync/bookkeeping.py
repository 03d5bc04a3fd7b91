"""The sync worker's bookkeeping of items in the durable queue: expiry, failed attempts
and dead letters, and storing a round's results before its items leave the queue."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edge_node.escalation import Settled
from edge_node.storage.queue_store import DurableQueue
from edge_node.storage.queued_item import QueuedItem
from edge_node.storage.result_store import ResultStore
from edge_node.sync.report import EXPIRED_TTL, SYNCED, done_record
from router.outcome import retry_can_succeed
from router.wire import RerankResult


class QueueBook:
    """Moves queued items to their final state. Thread-safe as the stores are (the
    worker calls it from worker threads, two at a time while a drain pipelines rounds).
    `max_attempts()` is the policy's `sync.max_attempts` in force."""

    def __init__(
        self,
        queue: DurableQueue,
        results: ResultStore,
        *,
        clock: Callable[[], float],
        log: Any,
        max_attempts: Callable[[], int],
        sample: Callable[[], bool],
        on_synced: Callable[[list[tuple[QueuedItem, RerankResult]]], None] | None,
    ) -> None:
        self._queue = queue
        self._results = results
        self._clock = clock
        self._log = log
        self._max_attempts = max_attempts
        self._sample = sample
        self._on_synced = on_synced

    def fail_all(self, items: list[QueuedItem], error: str) -> int:
        """Count one failed attempt for each item (worker thread); returns how many were
        dead-lettered."""
        return sum(self.attempt_failed(item, error) for item in items)

    def store_results(
        self, items: list[QueuedItem], settled: list[Settled]
    ) -> tuple[int, int, int]:
        """All answered items' results stored durably in one transaction, then the synced
        items leave the queue in one transaction (worker thread); items the cloud failed
        count an attempt. Returns (failed, dead, done). A crash between the two leaves a
        `done` result with its item still queued: the next round re-sends it, the cloud
        answers from its dedup store (`cached`, charge released), the result is stored
        again and the item leaves."""
        failed = dead = 0
        done: list[tuple[QueuedItem, RerankResult]] = []
        for item, s in zip(items, settled, strict=True):
            if s.result is not None:
                done.append((item, s.result))
                continue
            failed += 1
            dead += self.attempt_failed(
                item,
                f"{s.code}: {s.message}",
                force_dead=not retry_can_succeed(s.outcome),
            )
        self._results.put_done_many([(i.request_id, done_record(i, r)) for i, r in done])
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

    def expire(self, in_flight: frozenset[str]) -> int:
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

    def attempt_failed(self, item: QueuedItem, error: str, *, force_dead: bool = False) -> int:
        """Count an attempt; dead-letter the item when out of attempts (its result becomes
        `failed`, unless the id already holds a `done` result: an id reused after its first
        request was answered, which keeps that answer). Returns 1 if it was
        dead-lettered, else 0."""
        attempts = self._queue.record_failure(item.request_id, error)
        if not force_dead and attempts < self._max_attempts():
            self._log.info(
                "sync_attempt_failed",
                request_id=item.request_id,
                task=item.task,
                route="cloud",
                reason="cloud_item_error",
                attempts=attempts,
            )
            return 0
        if not self._is_done(item.request_id):  # an earlier request's answer stays
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

    def _is_done(self, request_id: str) -> bool:
        record = self._results.get(request_id)
        return record is not None and record.get("status") == "done"
