"""Idempotency store for re-rank results, shared by every replica as one named Ray actor.

Keyed by `(node_id, request_id)`; a result is kept for `ttl_s` seconds after it was last
stored. Each entry also keeps a fingerprint of the item that produced it, so a request_id
re-used for a *different* item is reported as a conflict instead of answered from cache.

Claims (exactly-once across replicas in one round trip): `claim_many` answers each key
atomically with its stored result, or `"claimed"` (no result and no live claim: the key is
now marked in progress for `claim_timeout_s` and the caller must compute it, then `put` or
`release` it), or `"pending"` (another caller holds a live claim). A pending caller waits
on the actor (`ResultStoreActor.wait_claims`) until the result is put (it gets the result),
the claim is released, or the claim is abandoned, i.e. not settled within `claim_timeout_s`
(e.g. its replica died): then one waiter is granted the claim and computes. So while the
actor lives, a key is computed once unless a claim is abandoned, or a first send (computed
without a claim and put afterwards, see `rerank_flow.answer_with_dedup`) races a retry of
it; every such re-computation is counted (`computed_by_key_max`, `claims_abandoned`).
Nothing here relies on the order in which the actor runs calls (an async actor does not
keep submission order): a put that arrives late is waited for, a put for a key claimed by
someone else is stored all the same.

Lifetime: the actor is *detached* (it survives replica restarts and redeploys of the app)
and named `settings.result_store_name` in namespace `settings.ray_namespace`; replicas get
it with `get_if_exists=True`, and `cloud_service.server` kills it on shutdown. Ray restarts
it if its process dies (`max_restarts=-1`); a restart loses the stored results and the
claims: calls in flight (waits included) fail with a RayError (replicas then compute
without dedup), and items that arrive again are recomputed once more. That is safe:
re-ranking is deterministic and the edge dedups by request_id too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

StoreKey = tuple[str, str]
"""`(node_id, request_id)`."""

CLAIMED: Literal["claimed"] = "claimed"
"""Claim outcome: the caller now holds the key's claim and must compute, then put or release."""
PENDING: Literal["pending"] = "pending"
"""Claim outcome: another caller holds a live claim; wait for its result (`wait_claims`)."""
DEFAULT_CLAIM_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class StoredResult:
    """One computed result (`RerankResult.model_dump(mode="json")`) and its item's fingerprint."""

    fingerprint: str
    result: dict[str, Any]


Outcome = StoredResult | Literal["claimed", "pending"]
"""What `claim_many` answers per key: the stored result, CLAIMED or PENDING."""


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

    Also holds the claims of keys being computed (see the module docstring); a claim expires
    `claim_timeout_s` after it was granted. Pure logic with an injected monotonic `clock`;
    not thread-safe (the actor runs one call at a time on its event loop), and each method
    is atomic. When more than `max_entries` are held, the oldest entries are dropped first.
    Raises ValueError on a non-positive `ttl_s`/`claim_timeout_s` or `max_entries` < 1.
    """

    def __init__(
        self,
        ttl_s: float,
        *,
        clock: Callable[[], float],
        max_entries: int = 1_000_000,
        claim_timeout_s: float = DEFAULT_CLAIM_TIMEOUT_S,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        if claim_timeout_s <= 0:
            raise ValueError("claim_timeout_s must be > 0")
        self._ttl_s = ttl_s
        self._clock = clock
        self._max_entries = max_entries
        self._claim_timeout_s = claim_timeout_s
        self._entries: OrderedDict[StoreKey, _Entry] = OrderedDict()
        self._claims: OrderedDict[StoreKey, float] = OrderedDict()
        """Key -> expiry of its claim, in grant order (= expiry order: one timeout for all)."""
        self._claims_abandoned = 0
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
        """Store freshly computed results (each counts as one computation of its key).

        A put over a live entry of the same item counts a second computation (e.g. a first
        send's result arriving after a retry of it was computed too). First put wins: a put
        over a live entry of a *different* item (a request_id reused by a sender that
        promised a first send) is dropped, leaving the entry and any claim as they were,
        and counted as a conflict."""
        now = self._clock()
        self._purge(now)
        for key, stored in entries:
            previous = self._entries.get(key)
            if previous is not None and previous.stored.fingerprint != stored.fingerprint:
                self._conflicts += 1
                continue
            self._claims.pop(key, None)
            self._entries.pop(key, None)
            computed = 1 if previous is None else previous.computed + 1
            self._entries[key] = _Entry(now + self._ttl_s, stored, computed)
            self._computed_total += 1
            self._computed_max = max(self._computed_max, computed)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def claim_many(self, lookups: Sequence[tuple[StoreKey, str]]) -> list[Outcome]:
        """For each `(key, fingerprint)`, atomically: the live stored result (counted like
        `get_many`: a hit, or a conflict if the fingerprint differs), else PENDING if another
        caller holds a live claim, else CLAIMED (the claim is granted to this caller now; an
        abandoned claim is taken over). A key asked twice in one call is CLAIMED then PENDING.
        """
        now = self._clock()
        self._purge(now)
        out: list[Outcome] = []
        for key, fingerprint in lookups:
            entry = self._entries.get(key)
            if entry is not None:
                if entry.stored.fingerprint == fingerprint:
                    self._dedup_hits += 1
                else:
                    self._conflicts += 1
                out.append(entry.stored)
            elif key in self._claims:
                out.append(PENDING)
            else:
                self._claims[key] = now + self._claim_timeout_s
                out.append(CLAIMED)
        return out

    def release_many(self, keys: Sequence[StoreKey]) -> None:
        """Drop the claims of `keys` (their computation failed; nothing is stored): the next
        claim of such a key is granted. Unknown keys are ignored."""
        for key in keys:
            self._claims.pop(key, None)

    def claim_expiry(self, keys: Sequence[StoreKey]) -> float | None:
        """The earliest expiry (clock time) among the live claims of `keys`, or None."""
        self._purge(self._clock())
        expiries = [self._claims[k] for k in keys if k in self._claims]
        return min(expiries) if expiries else None

    def computed_count(self, key: StoreKey) -> int:
        """How many times `key` was computed while its entry stayed live (0 if not held)."""
        entry = self._entries.get(key)
        return 0 if entry is None else entry.computed

    def computed_counts(self, keys: Sequence[StoreKey]) -> list[int]:
        """`computed_count` of each key, in order (read-only; used to check exactly-once)."""
        return [self.computed_count(k) for k in keys]

    def stats(self) -> dict[str, int]:
        """Counters: computed_total, dedup_hits, conflicts (request_id_conflict answers
        plus dropped puts of another item, see `put_many`), entries, computed_by_key_max,
        claims (live) and claims_abandoned (expired before their put or release)."""
        self._purge(self._clock())
        return {
            "computed_total": self._computed_total,
            "dedup_hits": self._dedup_hits,
            "conflicts": self._conflicts,
            "entries": len(self._entries),
            "computed_by_key_max": self._computed_max,
            "claims": len(self._claims),
            "claims_abandoned": self._claims_abandoned,
        }

    def _purge(self, now: float) -> None:
        # Entries are ordered by last put, and every put uses the same TTL, so expiry order
        # equals insertion order: drop from the front until a live entry is found.
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.expires_at > now:
                break
            del self._entries[key]
        while self._claims:
            key, expires_at = next(iter(self._claims.items()))
            if expires_at > now:
                break
            del self._claims[key]
            self._claims_abandoned += 1


class ResultStoreActor:
    """The Ray actor body: a `TtlResultMap` on the monotonic clock.

    An async actor: every method runs on the actor's one event loop and, except for the
    waiting in `wait_claims`, without awaiting, so each call is atomic with respect to the
    others. Waiting callers do not block other calls.
    """

    def __init__(
        self, ttl_s: float, max_entries: int, claim_timeout_s: float = DEFAULT_CLAIM_TIMEOUT_S
    ) -> None:
        self._map = TtlResultMap(
            ttl_s, clock=time.monotonic, max_entries=max_entries, claim_timeout_s=claim_timeout_s
        )
        self._changed: asyncio.Event | None = None

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def put_many(self, entries: Sequence[tuple[StoreKey, StoredResult]]) -> None:
        """See `TtlResultMap.put_many` (wakes callers waiting for these keys)."""
        self._map.put_many(entries)
        self._notify()

    async def settle(
        self,
        puts: Sequence[tuple[StoreKey, StoredResult]],
        releases: Sequence[StoreKey],
        claims: Sequence[tuple[StoreKey, str]],
    ) -> list[Outcome]:
        """One replica's merged store traffic in one call, atomically: store `puts`, drop the
        claims of `releases`, then `claim_many(claims)`."""
        if puts:
            self._map.put_many(puts)
        if releases:
            self._map.release_many(releases)
        if puts or releases:
            self._notify()
        return self._map.claim_many(claims) if claims else []

    async def wait_claims(
        self, claims: Sequence[tuple[StoreKey, str]], max_wait_s: float
    ) -> list[Outcome]:
        """`claim_many(claims)`, repeated while some key is PENDING until its result is put,
        its claim released or abandoned (then this caller gets CLAIMED), or `max_wait_s`
        passed (then PENDING is answered for the keys still in progress). Keys already
        answered keep their first outcome."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait_s
        out = self._map.claim_many(claims)
        while True:
            waiting = [i for i, o in enumerate(out) if o == PENDING]
            left = deadline - loop.time()
            if not waiting or left <= 0:
                return out
            expiry = self._map.claim_expiry([claims[i][0] for i in waiting])
            if expiry is not None:  # wake up when the first of those claims is abandoned
                left = min(left, max(0.0, expiry - time.monotonic()) + 0.001)
            if self._changed is None:
                self._changed = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
            again = self._map.claim_many([claims[i] for i in waiting])
            for i, outcome in zip(waiting, again, strict=True):
                out[i] = outcome

    async def computed_counts(self, keys: Sequence[StoreKey]) -> list[int]:
        """See `TtlResultMap.computed_counts`."""
        return self._map.computed_counts(keys)

    async def stats(self) -> dict[str, int]:
        """See `TtlResultMap.stats`."""
        return self._map.stats()


def get_or_create_result_store(
    name: str,
    namespace: str,
    *,
    ttl_s: float,
    max_entries: int,
    claim_timeout_s: float = DEFAULT_CLAIM_TIMEOUT_S,
) -> Any:
    """The handle of the shared detached store actor, creating it if it does not exist yet
    (an existing actor keeps the settings it was created with).

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
    ).remote(ttl_s, max_entries, claim_timeout_s)


def kill_result_store(name: str, namespace: str) -> bool:
    """Kill the named store actor if it exists; True if one was killed. Needs a connected Ray."""
    import ray

    try:
        handle = ray.get_actor(name, namespace=namespace)
    except ValueError:
        return False
    ray.kill(handle, no_restart=True)
    return True
