"""Final and pending results by request_id (diskcache on local disk).

A record is a JSON object `{"request_id", "task", "status", "updated_at", ...}` with
`status` one of pending | done | expired | failed and, by status, `provisional` (the local
answer given while pending; kept afterwards), `result` (done), `reason` (expired) or
`error` (failed). Records are kept for `retention_s` after their last update, then vanish:
`get` stops returning them at once and `purge_expired` deletes them from disk.

Durability is that of the queue (`fsync` os_crash_safe = SQLite synchronous NORMAL in WAL
mode, per_write = FULL); the cache never evicts on its own. One process per directory;
every method is thread-safe within the process.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import orjson

from edge_node.durable_cache import open_durable_cache
from router.errors import EdgerouteError
from router.policy import Durability

Status = Literal["pending", "done", "expired", "failed"]
STATUSES: tuple[Status, ...] = ("pending", "done", "expired", "failed")
DEFAULT_RETENTION_S = 7 * 86_400
_PREFIX = "r:"


class ResultStoreError(EdgerouteError):
    """The result store's storage failed (disk full, corrupt database...)."""

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
    ) -> None:
        self._retention_s = retention_s
        self._clock = clock
        self._lock = threading.RLock()
        try:
            self._cache = open_durable_cache(directory, fsync)
        except Exception as exc:
            raise ResultStoreError(f"cannot open result store at {directory}: {exc}") from exc
        # request_id -> (status, updated_at), ordered by updated_at (re-inserted on update)
        self._index: dict[str, tuple[str, float]] = {}
        self._counts: Counter[str] = Counter()
        self._load()

    def _load(self) -> None:
        rows: list[tuple[float, str, str]] = []
        for key in self._cache.iterkeys():
            if isinstance(key, str) and key.startswith(_PREFIX):
                rec = self._decode(self._cache.get(key))
                if rec is not None:
                    rows.append((float(rec["updated_at"]), key[len(_PREFIX) :], rec["status"]))
        for updated_at, rid, status in sorted(rows):
            self._index[rid] = (status, updated_at)
            self._counts[status] += 1

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
        self._write(request_id, "done", {"result": result, "task": result.get("task")})

    def put_expired(self, request_id: str, reason: str) -> None:
        """Record that the request will never get a cloud result (ttl, dropped...)."""
        self._write(request_id, "expired", {"reason": reason})

    def put_failed(self, request_id: str, error: str) -> None:
        """Record that cloud verification failed for good (dead letter) with its error."""
        self._write(request_id, "failed", {"error": error})

    def _write(self, request_id: str, status: Status, fields: dict[str, Any]) -> None:
        now = self._clock()
        key = _PREFIX + request_id
        with self._lock:
            previous = self._get_live(request_id, now) or {}
            record: dict[str, Any] = {
                "request_id": request_id,
                "task": fields.pop("task", None) or previous.get("task"),
                "status": status,
                "updated_at": now,
            }
            if "provisional" in previous:
                record["provisional"] = previous["provisional"]
            record.update(fields)
            try:
                self._cache.set(key, orjson.dumps(record))
            except Exception as exc:
                raise ResultStoreError(f"cannot write result: {exc}") from exc
            old = self._index.pop(request_id, None)
            if old is not None:
                self._counts[old[0]] -= 1
            self._index[request_id] = (status, now)
            self._counts[status] += 1

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
                with self._cache.transact():
                    for rid, _ in stale:
                        self._cache.delete(_PREFIX + rid)
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
        entry = self._index.get(request_id)
        if entry is None or entry[1] < now - self._retention_s:
            return None
        return self._decode(self._cache.get(_PREFIX + request_id))

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
