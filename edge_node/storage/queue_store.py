"""The durable queue of requests waiting for the cloud (diskcache on local disk).

Every item is one SQLite row (diskcache, WAL journal), keyed so that the key alone says
its position, size, age, task and request_id:

    q:<seq, 20 digits>:<size bytes>:<enqueued_at>:<task>:<request_id>

(`edge_node.storage.queue_keys`), so reopening the queue rebuilds its index (order, byte
count, ages) from the keys without reading a payload: no separate counter to drift.
`seq` is one more than the highest on disk when the queue is opened, then counts up in
memory (seqs are only ever compared between queued items).

Durability: `put` returns only after the SQLite transaction committed. With
`fsync: os_crash_safe` (`PRAGMA synchronous=NORMAL` in WAL mode) an acknowledged item
survives a crash of the process (kill -9); with `per_write` (`synchronous=FULL`) it also
survives an OS crash or power loss. Payloads are kept inside SQLite (never in side files,
which diskcache does not fsync), and the cache never evicts (`eviction_policy="none"`):
items leave only through `remove` or `on_full: drop_oldest`.

Bad records: a key that does not parse is rebuilt from its row when the row is intact;
otherwise, and for any row that cannot be decoded when read, the row is quarantined
(`shelf`, `edge_node.storage.quarantine`: counted, logged with its id, listed) and every
other item keeps flowing. A file that cannot be trusted refuses to open (`StoreCorrupt`).

Concurrency: one process per directory (this class does not check it; an edge node's data
dir is guarded by `edge_node.storage.data_dir_lock`). Within the process every method is
thread-safe (one lock around the index and the SQLite writes). Concurrent `put`s are
group-committed (`edge_node.storage.group_commit`): one transaction (one multi-row INSERT) for all
the items that arrived while the previous commit ran, each `put` returning once its
transaction is durable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path

import structlog

from edge_node.storage import quarantine
from edge_node.storage.durable_cache import (
    StoreCorrupt,
    delete_many,
    get_many,
    open_durable_cache,
    put_many,
    truncate_log,
)
from edge_node.storage.group_commit import GroupCommitter
from edge_node.storage.queue_keys import ITEM_PREFIX, QueueEntry, make_key, parse_key
from edge_node.storage.queue_repair import decode_item, repair
from edge_node.storage.queued_item import QueuedItem, reuse_outcome
from router.errors import EdgerouteError, QueueFull, RequestTooLarge
from router.policy import QueueSettings

_log = structlog.get_logger("edge_node.queue")

_MAX_ERROR_CHARS = 500


class QueueStoreError(EdgerouteError):
    """The queue's storage failed (disk full, corrupt database...)."""

    status = 503
    code = "queue_store_error"


class DurableQueue:
    """FIFO of `QueuedItem`s on disk, bounded by `settings.max_items` and `max_bytes`.
    `read_only` (a reader beside a running node, e.g. `queue list`) never repairs or
    quarantines (bad keys and rows are skipped, left for the node). `clock` (wall-clock
    seconds) is used only for `retry_after_s`, the hint put in `QueueFull` when
    `on_full: reject` refuses an item. Raises `QueueStoreError` if it cannot be opened."""

    def __init__(
        self,
        directory: str | Path,
        settings: QueueSettings,
        *,
        clock: Callable[[], float] = time.time,
        retry_after_s: float = 1.0,
        read_only: bool = False,
    ) -> None:
        self._read_only = read_only
        self._settings = settings
        self._clock = clock
        self._retry_after_s = retry_after_s
        self._lock = threading.RLock()
        try:
            self._cache = open_durable_cache(
                directory, settings.fsync, store="queue", secure_delete=True
            )
        except StoreCorrupt:
            raise
        except Exception as exc:  # sqlite3 / OSError, mapped at the boundary
            raise QueueStoreError(f"cannot open queue at {directory}: {exc}") from exc
        self._entries: dict[str, QueueEntry] = {}  # request_id -> entry, in seq order
        self._bytes = 0
        self._next_seq = 0  # the seq of the next item: one more than the highest queued
        self._group = GroupCommitter(self._commit_group)
        self.shelf = quarantine.Shelf(
            self._cache, clock, "queue_row_quarantined", QueueStoreError, keep_raw=False
        )
        self._load()

    def _load(self) -> None:
        """Rebuild the index from the keys; a key that does not parse is repaired from its
        row or quarantined (`_repair_keys`), never a reason to refuse the rest."""
        entries: list[QueueEntry] = []
        bad_keys: list[str] = []
        for k in self._cache.iterkeys():
            if isinstance(k, str) and k.startswith(ITEM_PREFIX):
                try:
                    entries.append(parse_key(k))
                except ValueError:
                    bad_keys.append(k)
        entries.sort(key=lambda e: e.seq)
        self._next_seq = entries[-1].seq + 1 if entries else 0
        for e in entries:
            self._entries[e.request_id] = e
            self._bytes += e.size
        if bad_keys and not self._read_only:
            self._repair_keys(bad_keys)

    def _repair_keys(self, keys: list[str]) -> None:
        """Rows whose key does not parse (while opening): re-keyed at the end of the queue
        when intact (`queue_repair.repair`, one transaction, logged), else quarantined."""
        try:
            fixed, bad = repair(self._cache, keys, self._next_seq, self._entries.keys())
        except Exception as exc:
            raise QueueStoreError(f"cannot repair queue keys: {exc}") from exc
        for entry in fixed:
            self._entries[entry.request_id] = entry
            self._bytes += entry.size
            self._next_seq = entry.seq + 1
            _log.warning("queue_key_repaired", request_id=entry.request_id, reason="malformed key")
        if bad:
            self._quarantine(bad)

    # --- writes -----------------------------------------------------------------------

    def put(self, item: QueuedItem) -> list[str]:
        """Append `item`; durable (committed to SQLite) when this returns.

        Idempotent: if the same request (`QueuedItem.same_request`) is queued under this
        request_id, nothing changes and [] is returned; a different request under a queued
        request_id raises `RequestIdConflict` (409) and changes nothing. When the queue is
        full, `on_full: reject` raises `QueueFull` (with `retry_after_s`) and
        `on_full: drop_oldest` removes the oldest items (any task) in the same transaction
        and returns their request_ids, which the caller must record as expired. An item
        bigger than `max_bytes` by itself raises `RequestTooLarge`.

        Group commit: puts from other threads that arrive while a commit runs are written
        together in the next transaction (one commit, one fsync under `per_write`); each
        returns only after the transaction holding its item committed. Thread-safe.
        """
        return self._group.submit((item, self._encode(item)))

    def _encode(self, item: QueuedItem) -> bytes:
        """The item's stored bytes; raises RequestTooLarge if they exceed max_bytes."""
        payload = item.model_dump_json().encode()
        if len(payload) > self._settings.max_bytes:
            raise RequestTooLarge(
                f"queued item is {len(payload)} bytes, more than queue.max_bytes "
                f"({self._settings.max_bytes})",
                field="inputs",
            )
        return payload

    def put_many(self, items: Sequence[QueuedItem]) -> list[list[str] | EdgerouteError]:
        """`put` for several items at once, from one thread: one outcome per item, in order
        (the dropped ids, or the error `put` would raise: `QueueFull`, `RequestTooLarge`,
        `QueueStoreError`). The items go to the group committer together, so they are
        written in one transaction (up to the group size) instead of one thread hop and
        one wake-up each. Each item is durable when this returns, like `put`. Raises
        nothing for per-item faults. Thread-safe."""
        out: list[list[str] | EdgerouteError] = []
        pending: list[tuple[int, tuple[QueuedItem, bytes]]] = []
        for item in items:
            try:
                pending.append((len(out), (item, self._encode(item))))
                out.append([])
            except RequestTooLarge as exc:
                out.append(exc)
        outcomes = self._group.submit_many([value for _, value in pending])
        for (i, _), outcome in zip(pending, outcomes, strict=True):
            if isinstance(outcome, EdgerouteError) or not isinstance(outcome, BaseException):
                out[i] = outcome
            else:  # commit itself failed with a foreign error: map it at the boundary
                err = QueueStoreError(f"cannot write queue item: {outcome}")
                err.__cause__ = outcome
                out[i] = err
        return out

    def _commit_group(
        self, group: Sequence[tuple[QueuedItem, bytes]]
    ) -> list[list[str] | BaseException]:
        """Write every item of `group` atomically in ONE SQLite transaction (group commit):
        the new items as one multi-row INSERT (at most 512 rows, so one statement, which
        SQLite commits as its own transaction), preceded by one DELETE of `drop_oldest`
        victims in the same explicit transaction when there are any. One outcome per item:
        the dropped ids, or the error its `put` raises. On a storage error the in-memory
        index is restored and every item not refused otherwise fails."""
        with self._lock:
            seq = self._next_seq
            out: list[list[str] | BaseException] = []
            rows: dict[str, bytes] = {}  # key -> payload, in seq order
            doomed: list[str] = []  # keys already on disk to delete
            added: list[QueueEntry] = []
            forgotten: list[QueueEntry] = []
            for item, payload in group:
                existing = self._entries.get(item.request_id)
                if existing is not None:
                    out.append(self._same_or_conflict(item, existing, rows))
                    continue
                try:
                    victims = self._victims_for(len(payload))
                except QueueFull as exc:
                    out.append(exc)
                    continue
                for v in victims:
                    if rows.pop(v.key, None) is None:  # not one of this group's own items
                        doomed.append(v.key)
                    self._forget(v)
                    forgotten.append(v)
                size = len(payload)
                key = make_key(seq, size, item.enqueued_at, item.task, item.request_id)
                entry = QueueEntry(key, seq, size, item.enqueued_at, item.task, item.request_id)
                rows[key] = payload
                self._entries[item.request_id] = entry
                self._bytes += size
                added.append(entry)
                seq += 1
                out.append([v.request_id for v in victims])
            if not added:
                return out
            try:
                if doomed:
                    with self._cache.transact():
                        delete_many(self._cache, doomed)
                        put_many(self._cache, rows.items())
                else:
                    put_many(self._cache, rows.items())
            except Exception as exc:
                self._restore(added, forgotten)
                err = QueueStoreError(f"cannot write queue item: {exc}")
                err.__cause__ = exc
                return [o if isinstance(o, QueueFull) else err for o in out]
            self._next_seq = seq
            return out

    def _same_or_conflict(
        self, item: QueuedItem, existing: QueueEntry, rows: dict[str, bytes]
    ) -> list[str] | EdgerouteError:
        """The outcome of putting `item` while `existing` holds its request_id (lock held):
        `reuse_outcome` of the item queued under it (read from this group's rows or the
        disk), or the store's error if it cannot be read."""
        pending = rows.get(existing.key)
        try:
            queued = self._read(existing) if pending is None else decode_item(pending)
        except QueueStoreError as exc:
            return exc
        return reuse_outcome(queued, item)

    def _restore(self, added: list[QueueEntry], forgotten: list[QueueEntry]) -> None:
        """Undo a failed group's index changes (lock held), keeping seq order."""
        keep = {e.request_id: e for e in self._entries.values()}
        for e in added:
            keep.pop(e.request_id, None)
        for e in forgotten:
            if e not in added:
                keep[e.request_id] = e
        self._entries = dict(sorted(keep.items(), key=lambda kv: kv[1].seq))
        self._bytes = sum(e.size for e in self._entries.values())

    def _victims_for(self, size: int) -> list[QueueEntry]:
        """The oldest entries to drop so that one more item of `size` fits (lock held)."""
        count, total = len(self._entries), self._bytes
        if count + 1 <= self._settings.max_items and total + size <= self._settings.max_bytes:
            return []
        if self._settings.on_full == "reject":
            raise QueueFull(
                f"queue full ({count} items, {total} bytes)", retry_after_s=self._retry_after_s
            )
        victims: list[QueueEntry] = []
        for e in self._entries.values():
            if count + 1 <= self._settings.max_items and total + size <= self._settings.max_bytes:
                break
            victims.append(e)
            count -= 1
            total -= e.size
        return victims

    def _forget(self, entry: QueueEntry) -> None:
        del self._entries[entry.request_id]
        self._bytes -= entry.size

    def remove(self, request_ids: Iterable[str]) -> int:
        """Delete these items in one transaction and one DELETE statement (unknown ids are
        ignored); returns how many were removed. Durable when it returns: either every
        listed item is gone or, on `QueueStoreError`, none is. Their bytes are zeroed in
        the database file (secure_delete); when the queue is left empty the write-ahead
        log is checkpointed and truncated, so no removed item's inputs stay on disk."""
        with self._lock:
            gone = [self._entries[r] for r in dict.fromkeys(request_ids) if r in self._entries]
            if not gone:
                return 0
            try:
                delete_many(self._cache, [e.key for e in gone])  # atomic
            except Exception as exc:
                raise QueueStoreError(f"cannot remove queue items: {exc}") from exc
            for e in gone:
                self._forget(e)
            if not self._entries:  # emptied: no removed inputs left in the log either
                truncate_log(self._cache, _log)
            return len(gone)

    def record_failure(self, request_id: str, error: str) -> int:
        """Count one failed attempt of an item and keep `error` (truncated to 500 chars)
        as its `last_error`; returns the new attempt count (0 if the item is not queued).
        The item keeps its place and its accounted size."""
        with self._lock:
            entry = self._entries.get(request_id)
            if entry is None:
                return 0
            item = self._read(entry)
            if item is None:
                return 0
            updated = item.model_copy(
                update={"attempts": item.attempts + 1, "last_error": error[:_MAX_ERROR_CHARS]}
            )
            try:
                self._cache.set(entry.key, updated.model_dump_json().encode())
            except Exception as exc:
                raise QueueStoreError(f"cannot update queue item: {exc}") from exc
            return updated.attempts

    # --- reads ------------------------------------------------------------------------

    def expired(self, now: float, *, exclude: Collection[str] = ()) -> list[QueuedItem]:
        """Items enqueued more than `ttl_s` before `now`, oldest first (not removed),
        leaving out the request_ids in `exclude`."""
        limit = now - self._settings.ttl_s
        with self._lock:
            old = [
                e
                for e in self._entries.values()
                if e.enqueued_at < limit and e.request_id not in exclude
            ]
            return self._read_many(old)

    def oldest(
        self, n: int, task: str | None = None, *, exclude: Collection[str] = ()
    ) -> list[QueuedItem]:
        """Up to `n` items (of `task`, or any), oldest first, leaving out the request_ids
        in `exclude` (e.g. items a caller has in flight); nothing is removed."""
        with self._lock:
            out: list[QueuedItem] = []
            tried: set[str] = set()  # read once each: a skipped bad row is not read again
            while True:
                picked: list[QueueEntry] = []
                for e in self._entries.values():
                    if len(picked) >= n - len(out):
                        break
                    wanted = task is None or e.task == task
                    if wanted and e.request_id not in exclude and e.request_id not in tried:
                        picked.append(e)
                tried.update(e.request_id for e in picked)
                items = self._read_many(picked)
                out += items
                if len(items) == len(picked):  # no bad row: nothing more to fill
                    return out

    def _read(self, entry: QueueEntry) -> QueuedItem | None:
        """The item of `entry`, or None if it had to be quarantined (lock held)."""
        items = self._read_many([entry])
        return items[0] if items else None

    def _read_many(self, entries: Sequence[QueueEntry]) -> list[QueuedItem]:
        """The items of `entries` (lock held), read with one SELECT per 1,000 keys, in
        order. A row that cannot be decoded is quarantined (unless `read_only`) and left
        out, a row gone from disk is dropped from the index: one bad record never stops
        the others. Raises QueueStoreError only if the disk cannot be read."""
        if not entries:
            return []
        try:
            raws = get_many(self._cache, [e.key for e in entries])
        except Exception as exc:
            raise QueueStoreError(f"cannot read queue items: {exc}") from exc
        out: list[QueuedItem] = []
        bad: list[tuple[str, str | None, str]] = []
        for e in entries:
            raw = raws.get(e.key)
            item = None if raw is None else decode_item(raw)
            if item is not None:
                out.append(item)
            elif raw is None:  # removed by another process meanwhile: not a bad record
                self._forget(e)
            elif not self._read_only:
                bad.append((e.key, e.request_id, "queue row cannot be decoded"))
        if bad:
            self._quarantine(bad)
        return out

    def _quarantine(self, rows: Sequence[tuple[str, str | None, str]]) -> None:
        """Move rows `(key, request_id or None, reason)` to the quarantine shelf (one
        transaction) and out of the index (lock held). Raises QueueStoreError if the disk
        cannot be written (nothing moved)."""
        self.shelf.move([(key, key, rid, reason) for key, rid, reason in rows])
        for key, rid, _ in rows:
            entry = self._entries.get(rid) if rid is not None else None
            if entry is not None and entry.key == key:
                self._forget(entry)

    def get(self, request_id: str) -> QueuedItem | None:
        """The queued item with this request_id, or None if it is not queued."""
        with self._lock:
            entry = self._entries.get(request_id)
            return None if entry is None else self._read(entry)

    def __contains__(self, request_id: object) -> bool:
        with self._lock:
            return request_id in self._entries

    @property
    def depth(self) -> int:
        """Number of items queued."""
        with self._lock:
            return len(self._entries)

    @property
    def bytes(self) -> int:
        """Payload bytes queued (serialized size of each item when it was enqueued)."""
        with self._lock:
            return self._bytes

    def oldest_age(self, now: float) -> float:
        """Seconds since the oldest item was enqueued; 0.0 when empty."""
        with self._lock:
            for e in self._entries.values():
                return max(0.0, now - e.enqueued_at)
            return 0.0

    def close(self) -> None:
        """Close the SQLite connections; the queue must not be used afterwards."""
        with self._lock:
            self._cache.close()
