"""Idempotency store for re-rank results, shared by every replica as one named Ray actor.

Keyed by `(node_id, request_id)`; a result is kept for `ttl_s` seconds after it was last
stored. Each entry also keeps a fingerprint of the item that produced it, so a request_id
re-used for a *different* item is reported as a conflict instead of answered from cache.

Lifetime: the actor is *detached* (it survives replica restarts and redeploys of the app)
and named `settings.result_store_name` in namespace `settings.ray_namespace`; replicas get
it with `get_if_exists=True`, and `cloud_service.server` kills it on shutdown. Ray restarts
it if its process dies (`max_restarts=-1`); a restart loses the stored results, so items
that arrive again are recomputed once more. That is safe: re-ranking is deterministic and
the edge dedups by request_id too.
"""

from __future__ import annotations

import hashlib
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

StoreKey = tuple[str, str]
"""`(node_id, request_id)`."""


@dataclass(frozen=True)
class StoredResult:
    """One computed result (`RerankResult.model_dump(mode="json")`) and its item's fingerprint."""

    fingerprint: str
    result: dict[str, Any]


@dataclass
class _Entry:
    expires_at: float
    stored: StoredResult
    computed: int


def item_fingerprint(task: str, inputs: Sequence[float], candidates: Sequence[str] | None) -> str:
    """A stable sha256 of what determines a re-rank result (task, inputs, candidates)."""
    h = hashlib.sha256()
    h.update(task.encode())
    h.update(b"\0")
    h.update(array("d", inputs).tobytes())
    h.update(b"\0")
    h.update(repr(None if candidates is None else list(candidates)).encode())
    return h.hexdigest()


class TtlResultMap:
    """A bounded map `StoreKey -> StoredResult` whose entries expire `ttl_s` after their last put.

    Pure logic with an injected monotonic `clock`; not thread-safe (the actor serialises
    calls). When more than `max_entries` are held, the oldest entries are dropped first.
    """

    def __init__(
        self, ttl_s: float, *, clock: Callable[[], float], max_entries: int = 1_000_000
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self._ttl_s = ttl_s
        self._clock = clock
        self._max_entries = max_entries
        self._entries: OrderedDict[StoreKey, _Entry] = OrderedDict()
        self._computed_total = 0
        self._dedup_hits = 0
        self._conflicts = 0
        self._computed_max = 0

    def get_many(self, lookups: Sequence[tuple[StoreKey, str]]) -> list[StoredResult | None]:
        """For each `(key, fingerprint)`: the live stored result, or None if absent/expired.

        A returned result whose fingerprint differs from the asked one is a conflict (the
        request_id was reused for another item); only matching results count as dedup hits.
        """
        now = self._clock()
        self._purge(now)
        out: list[StoredResult | None] = []
        for key, fingerprint in lookups:
            entry = self._entries.get(key)
            if entry is None or entry.expires_at <= now:
                out.append(None)
                continue
            if entry.stored.fingerprint == fingerprint:
                self._dedup_hits += 1
            else:
                self._conflicts += 1
            out.append(entry.stored)
        return out

    def put_many(self, entries: Sequence[tuple[StoreKey, StoredResult]]) -> None:
        """Store freshly computed results (each counts as one computation of its key)."""
        now = self._clock()
        self._purge(now)
        for key, stored in entries:
            previous = self._entries.pop(key, None)
            computed = 1 if previous is None else previous.computed + 1
            self._entries[key] = _Entry(now + self._ttl_s, stored, computed)
            self._computed_total += 1
            self._computed_max = max(self._computed_max, computed)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def computed_count(self, key: StoreKey) -> int:
        """How many times `key` was computed while its entry stayed live (0 if not held)."""
        entry = self._entries.get(key)
        return 0 if entry is None else entry.computed

    def computed_counts(self, keys: Sequence[StoreKey]) -> list[int]:
        """`computed_count` of each key, in order (read-only; used to check exactly-once)."""
        return [self.computed_count(k) for k in keys]

    def stats(self) -> dict[str, int]:
        """Counters: computed_total, dedup_hits, conflicts, entries, computed_by_key_max."""
        return {
            "computed_total": self._computed_total,
            "dedup_hits": self._dedup_hits,
            "conflicts": self._conflicts,
            "entries": len(self._entries),
            "computed_by_key_max": self._computed_max,
        }

    def _purge(self, now: float) -> None:
        # Entries are ordered by last put, and every put uses the same TTL, so expiry order
        # equals insertion order: drop from the front until a live entry is found.
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.expires_at > now:
                break
            del self._entries[key]


class ResultStoreActor:
    """The Ray actor body: a `TtlResultMap` on the monotonic clock (calls run one at a time)."""

    def __init__(self, ttl_s: float, max_entries: int) -> None:
        self._map = TtlResultMap(ttl_s, clock=time.monotonic, max_entries=max_entries)

    def get_many(self, lookups: Sequence[tuple[StoreKey, str]]) -> list[StoredResult | None]:
        """See `TtlResultMap.get_many`."""
        return self._map.get_many(lookups)

    def put_many(self, entries: Sequence[tuple[StoreKey, StoredResult]]) -> None:
        """See `TtlResultMap.put_many`."""
        self._map.put_many(entries)

    def exchange(
        self,
        puts: Sequence[tuple[StoreKey, StoredResult]],
        lookups: Sequence[tuple[StoreKey, str]],
    ) -> list[StoredResult | None]:
        """`put_many(puts)` then `get_many(lookups)` in one call (one round trip for the
        merged store traffic of a replica's concurrent requests)."""
        if puts:
            self._map.put_many(puts)
        return self._map.get_many(lookups) if lookups else []

    def computed_counts(self, keys: Sequence[StoreKey]) -> list[int]:
        """See `TtlResultMap.computed_counts`."""
        return self._map.computed_counts(keys)

    def stats(self) -> dict[str, int]:
        """See `TtlResultMap.stats`."""
        return self._map.stats()


def get_or_create_result_store(name: str, namespace: str, *, ttl_s: float, max_entries: int) -> Any:
    """The handle of the shared detached store actor, creating it if it does not exist yet.

    Requires a connected Ray; safe to call from several replicas at once (`get_if_exists`).
    """
    import ray

    actor_cls = ray.remote(ResultStoreActor)
    return actor_cls.options(
        name=name,
        namespace=namespace,
        get_if_exists=True,
        lifetime="detached",
        max_restarts=-1,
        num_cpus=0,
    ).remote(ttl_s, max_entries)


def kill_result_store(name: str, namespace: str) -> bool:
    """Kill the named store actor if it exists; True if one was killed. Needs a connected Ray."""
    import ray

    try:
        handle = ray.get_actor(name, namespace=namespace)
    except ValueError:
        return False
    ray.kill(handle, no_restart=True)
    return True
