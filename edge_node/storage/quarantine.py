"""Quarantine: where a store puts a row it cannot decode, so one bad record never stops
the others and is never silently dropped.

A quarantined row moves, in one transaction, from its key to `x:<its key's id part>`,
holding a JSON record: the original key, the request_id when known, the reason, the time
and, where the store allows it, the row's raw bytes (hex, for forensics or a manual
repair; never for queue rows, which hold inputs). Readers of the record (`records`) never
see the raw bytes. The queue and the result store each keep one
`Shelf`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import diskcache
import orjson
import structlog

from edge_node.storage.durable_cache import delete_many, get_many, put_many
from router.errors import EdgerouteError

_log = structlog.get_logger("edge_node.quarantine")

PREFIX = "x:"
"""Every quarantined row's key starts with this."""


def quarantine(
    cache: diskcache.Cache,
    rows: Sequence[tuple[str, str, str | None, str]],
    now: float,
    *,
    keep_raw: bool = True,
) -> None:
    """Move each row `(key, quarantine key suffix, request_id or None, reason)` to
    `PREFIX + suffix` with its record (module doc; the raw bytes only with `keep_raw`)
    and delete it, all in one transaction:
    every row moves or none does. Raises what the cache raises (sqlite3.Error,
    diskcache.Timeout); callers map it into their store's error."""
    raws = get_many(cache, [key for key, _, _, _ in rows])
    moved = [
        (
            PREFIX + suffix,
            orjson.dumps(
                {
                    "key": key,
                    "request_id": rid,
                    "status": "quarantined",
                    "reason": reason,
                    "quarantined_at": now,
                    "updated_at": now,
                    "raw_hex": raws[key].hex() if keep_raw and key in raws else None,
                }
            ),
        )
        for key, suffix, rid, reason in rows
    ]
    with cache.transact():
        put_many(cache, moved)
        delete_many(cache, [key for key, _, _, _ in rows])


def records(cache: diskcache.Cache, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The records of these quarantine keys that exist, key -> record without its raw
    bytes (an unreadable record reads as `{}`). Reads only."""
    out: dict[str, dict[str, Any]] = {}
    for key, raw in get_many(cache, keys).items():
        try:
            rec = orjson.loads(raw)
        except orjson.JSONDecodeError:
            rec = {}
        if isinstance(rec, dict):
            rec.pop("raw_hex", None)
            out[key] = rec
        else:
            out[key] = {}
    return out


def keys(cache: diskcache.Cache) -> list[str]:
    """Every quarantine key of the cache, in key order. Reads only (one index scan)."""
    return sorted(k for k in cache.iterkeys() if isinstance(k, str) and k.startswith(PREFIX))


class Shelf:
    """The quarantined rows of one store's cache: moving rows there, counting them,
    listing them and finding one by request_id (an in-memory map, read once when the shelf
    is made). Thread-safe (its own lock; the cache is). Storage failures raise `error`
    (the store's own EdgerouteError), with nothing moved."""

    def __init__(
        self,
        cache: diskcache.Cache,
        clock: Callable[[], float],
        event: str,
        error: type[EdgerouteError],
        *,
        keep_raw: bool = True,
    ) -> None:
        self._cache = cache
        self._clock = clock
        self._event = event
        self._error = error
        self._keep_raw = keep_raw
        self._lock = threading.Lock()
        found = records(cache, keys(cache))
        self._count = len(found)
        self._by_id = {str(r["request_id"]): k for k, r in found.items() if r.get("request_id")}

    @property
    def count(self) -> int:
        """Rows quarantined in this store (kept across restarts)."""
        with self._lock:
            return self._count

    def move(self, rows: Sequence[tuple[str, str, str | None, str]]) -> None:
        """`quarantine` these rows in one transaction, then log each (`event`, with its
        request_id and reason, never its content)."""
        try:
            quarantine(self._cache, rows, self._clock(), keep_raw=self._keep_raw)
        except Exception as exc:
            raise self._error(f"cannot quarantine rows: {exc}") from exc
        with self._lock:
            self._count += len(rows)
            self._by_id.update({rid: PREFIX + suffix for _, suffix, rid, _ in rows if rid})
        for _, _, rid, reason in rows:
            _log.error(self._event, request_id=rid, reason=reason)

    def records(self, limit: int = 100) -> list[dict[str, Any]]:
        """Up to `limit` quarantine records (raw bytes left out), in key order."""
        try:
            return list(records(self._cache, keys(self._cache)[:limit]).values())
        except Exception as exc:
            raise self._error(f"cannot read quarantined rows: {exc}") from exc

    def find(self, request_id: str) -> dict[str, Any] | None:
        """The quarantine record of `request_id`, or None (one read, only when it is known
        to be there)."""
        with self._lock:
            key = self._by_id.get(request_id)
        if key is None:
            return None
        try:
            return records(self._cache, [key]).get(key)
        except Exception as exc:
            raise self._error(f"cannot read quarantined rows: {exc}") from exc
