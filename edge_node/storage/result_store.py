"""Final and pending results by request_id (diskcache on local disk).

A record is a JSON object `{"request_id", "task", "status", "updated_at", ...}` with
`status` one of pending | done | expired | failed | quarantined and, by status,
`provisional` (the local answer given while pending; kept afterwards), `result` (done),
`reason` (expired, quarantined) or `error` (failed). Records are kept for `retention_s`
after their last update, then vanish: `get` stops returning them at once and
`purge_expired` deletes them from disk. A record found undecodable when the store opens
is quarantined, not dropped: kept under `x:<request_id>` with its raw bytes, its id
answering `quarantined` (with the reason).

Durability is that of the queue (`fsync` os_crash_safe = SQLite synchronous NORMAL in WAL
mode, per_write = FULL); the cache never evicts on its own. One process per directory;
every method is thread-safe within the process.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import orjson
import structlog

from edge_node.storage import quarantine
from edge_node.storage.durable_cache import (
    StoreCorrupt,
    delete_many,
    get_many,
    open_durable_cache,
    put_many,
)
from router.errors import EdgerouteError
from router.policy import Durability

Status = Literal["pending", "done", "expired", "failed", "quarantined"]
STATUSES: tuple[Status, ...] = ("pending", "done", "expired", "failed", "quarantined")
DEFAULT_RETENTION_S = 7 * 86_400
_PREFIX = "r:"
_QUARANTINE = quarantine.PREFIX
_log = structlog.get_logger("edge_node.results")


class ResultStoreError(EdgerouteError):
    """The result store's storage failed (disk full, corrupt database...)."""

    status = 503
    code = "result_store_error"


class ResultStore:
    """Results by request_id with per-status counts. `clock` is wall-clock seconds.

    Reopening a directory restores every record and the counts (one scan of the store).
    Raises `ResultStoreError` when the disk cannot be read or written.
    """

    def __init__(
        self,
        directory: str | Path,
        fsync: Durability = "os_crash_safe",
        *,
        retention_s: float = DEFAULT_RETENTION_S,
        clock: Callable[[], float] = time.time,
        read_only: bool = False,
    ) -> None:
        self._read_only = read_only
        self._retention_s = retention_s
        self._clock = clock
        self._lock = threading.RLock()
        try:
            self._cache = open_durable_cache(directory, fsync, store="results")
        except StoreCorrupt:
            raise
        except Exception as exc:
            raise ResultStoreError(f"cannot open result store at {directory}: {exc}") from exc
        # request_id -> (status, updated_at), ordered by updated_at (re-inserted on update)
        self._index: dict[str, tuple[str, float]] = {}
        self._counts: Counter[str] = Counter()
        self._load()

    def _load(self) -> None:
        """Rebuild the index (one scan); a record that cannot be decoded is quarantined
        (unless `read_only`): moved under `x:<request_id>`, its id then answering
        `quarantined`, counted and logged, never dropped and never a reason to stop. A
        record written for the id since then wins over its quarantine record."""
        rows: dict[str, tuple[float, str]] = {}
        held: dict[str, float] = {}
        bad: list[str] = []
        for key in self._cache.iterkeys():
            if not isinstance(key, str):
                continue
            if key.startswith(_QUARANTINE):
                shelved = self._decode(self._cache.get(key)) or {}
                held[key[len(_QUARANTINE) :]] = float(shelved.get("quarantined_at", 0.0))
            elif key.startswith(_PREFIX):
                rec = self._decode(self._cache.get(key))
                status = rec.get("status") if rec is not None else None
                at = rec.get("updated_at") if rec is not None else None
                if status in STATUSES and isinstance(at, int | float):
                    rows[key[len(_PREFIX) :]] = (float(at), str(status))
                else:
                    bad.append(key)
        if bad and not self._read_only:
            for _, rid, _ in self._quarantine(bad):
                held[rid] = self._clock()
        for rid, at in held.items():
            rows.setdefault(rid, (at, "quarantined"))
        for updated_at, rid, status in sorted((a, r, s) for r, (a, s) in rows.items()):
            self._index[rid] = (status, updated_at)
            self._counts[status] += 1

    def _quarantine(self, keys: list[str]) -> list[tuple[float, str, str]]:
        """Move undecodable records to the quarantine shelf in one transaction; their
        index rows. Raises ResultStoreError if the disk cannot be written."""
        rows = [(key, key[len(_PREFIX) :]) for key in keys]
        shelf = quarantine.Shelf(self._cache, self._clock, "result_quarantined", ResultStoreError)
        shelf.move([(key, rid, rid, "stored result cannot be decoded") for key, rid in rows])
        now = self._clock()
        return [(now, rid, "quarantined") for _, rid in rows]

    @staticmethod
    def _decode(raw: object) -> dict[str, Any] | None:
        if not isinstance(raw, bytes):
            return None
        try:
            rec = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return rec if isinstance(rec, dict) else None

    # --- writes -----------------------------------------------------------------------

    def mark_pending(self, request_id: str, task: str, provisional: dict[str, Any]) -> None:
        """Record `request_id` as pending with the local answer given to the client.
        Overwrites any earlier record. Durable when it returns."""
        self._write(request_id, "pending", {"task": task, "provisional": provisional})

    def put_done(self, request_id: str, result: dict[str, Any]) -> None:
        """Record the final (cloud) result. Keeps the task and provisional answer of an
        earlier pending record; `result["task"]` is used when there was none."""
        self.put_done_many([(request_id, result)])

    def put_done_many(self, results: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """`put_done` for every `(request_id, result)` in ONE transaction: when this
        returns every record is durable; on `ResultStoreError` none was written (and the
        counts are unchanged). A request_id listed twice ends with its last result."""
        self._write_many(
            [(rid, "done", {"result": r, "task": r.get("task")}) for rid, r in results]
        )

    def put_expired(self, request_id: str, reason: str) -> None:
        """Record that the request will never get a cloud result (ttl, dropped...)."""
        self._write(request_id, "expired", {"reason": reason})

    def put_failed(self, request_id: str, error: str) -> None:
        """Record that cloud verification failed for good (dead letter) with its error."""
        self._write(request_id, "failed", {"error": error})

    def _write(self, request_id: str, status: Status, fields: dict[str, Any]) -> None:
        self._write_many([(request_id, status, fields)])

    def _write_many(self, updates: Sequence[tuple[str, Status, dict[str, Any]]]) -> None:
        """Write these records atomically (`put_many`: one multi-row INSERT per 1,000
        records, in one transaction), then update the index."""
        now = self._clock()
        with self._lock:
            live = self._get_live_many([rid for rid, _, _ in updates], now)
            built: dict[str, dict[str, Any]] = {}  # request_id -> new record, last wins
            for request_id, status, fields in updates:
                previous = built.get(request_id) or live.get(request_id) or {}
                record: dict[str, Any] = {
                    "request_id": request_id,
                    "task": fields.get("task") or previous.get("task"),
                    "status": status,
                    "updated_at": now,
                }
                if "provisional" in previous:
                    record["provisional"] = previous["provisional"]
                for k, v in fields.items():
                    if k != "task":
                        record[k] = v
                built.pop(request_id, None)  # re-inserted last: the write order is kept
                built[request_id] = record
            try:
                rows = [(_PREFIX + r, orjson.dumps(v)) for r, v in built.items()]
                put_many(self._cache, rows)  # atomic: one statement, or its own transaction
            except Exception as exc:
                raise ResultStoreError(f"cannot write result: {exc}") from exc
            for request_id, record in built.items():
                old = self._index.pop(request_id, None)
                if old is not None:
                    self._counts[old[0]] -= 1
                self._index[request_id] = (record["status"], now)
                self._counts[record["status"]] += 1

    def purge_expired(self, now: float | None = None) -> int:
        """Delete records not updated for `retention_s`; returns how many were deleted."""
        now = self._clock() if now is None else now
        limit = now - self._retention_s
        with self._lock:
            stale = []
            for rid, (status, updated_at) in self._index.items():
                if updated_at >= limit:
                    break
                stale.append((rid, status))
            if not stale:
                return 0
            try:
                delete_many(
                    self._cache,
                    [(_QUARANTINE if st == "quarantined" else _PREFIX) + rid for rid, st in stale],
                )
            except Exception as exc:
                raise ResultStoreError(f"cannot purge results: {exc}") from exc
            for rid, status in stale:
                del self._index[rid]
                self._counts[status] -= 1
            return len(stale)

    # --- reads ------------------------------------------------------------------------

    def get(self, request_id: str) -> dict[str, Any] | None:
        """The record of `request_id` (see module doc), or None if unknown or past
        retention."""
        with self._lock:
            return self._get_live(request_id, self._clock())

    def _get_live(self, request_id: str, now: float) -> dict[str, Any] | None:
        return self._get_live_many([request_id], now).get(request_id)

    def _get_live_many(self, request_ids: Sequence[str], now: float) -> dict[str, dict[str, Any]]:
        """The live records of these ids (lock held), read with one SELECT per 500 ids."""
        limit = now - self._retention_s
        keys = [
            (_QUARANTINE if e[0] == "quarantined" else _PREFIX) + rid
            for rid in dict.fromkeys(request_ids)
            if (e := self._index.get(rid)) is not None and e[1] >= limit
        ]
        if not keys:
            return {}
        try:
            raws = get_many(self._cache, keys)
        except Exception as exc:
            raise ResultStoreError(f"cannot read results: {exc}") from exc
        out: dict[str, dict[str, Any]] = {}
        for key, raw in raws.items():
            rec = self._decode(raw)
            if rec is not None:
                rec.pop("raw_hex", None)
                out[key[2:]] = rec
        return out

    def records(self, status: Status, limit: int = 100) -> list[dict[str, Any]]:
        """Up to `limit` live records with `status`, least recently updated first."""
        with self._lock:
            now = self._clock()
            out: list[dict[str, Any]] = []
            for rid, (st, _) in self._index.items():
                if len(out) >= limit:
                    break
                if st == status:
                    rec = self._get_live(rid, now)
                    if rec is not None:
                        out.append(rec)
            return out

    def counts(self) -> dict[str, int]:
        """Records by status (every status present, zero included), retention not applied
        until `purge_expired` runs."""
        with self._lock:
            return {s: self._counts[s] for s in STATUSES}

    def close(self) -> None:
        """Close the SQLite connections; the store must not be used afterwards."""
        with self._lock:
            self._cache.close()
