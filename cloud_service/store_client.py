"""The replica's side of the shared result store: concurrent requests share actor calls.

Each store call is one Ray actor round trip, which on 2 cores costs more CPU than the whole
re-rank of a small model. `CoalescingStore` sends at most one call at a time per replica;
the lookups and puts of every request that arrives while a call is in flight travel
together in the next one (`exchange(puts, lookups)`: puts applied first, then lookups).
Nothing waits on a timer: a lone request goes out at once, so a single connection pays
nothing extra, and under load the number of actor calls falls with the concurrency.

Guarantee kept: `put` returns only after the actor applied the entries, so when a client
has its answer, every replica's later lookup sees the stored result (the exactly-once
guarantee of `cloud_service.result_store` across replicas is unchanged). Free of Ray:
`exchange` is injected (the actor method in a replica, a fake in tests).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from cloud_service.result_store import StoredResult, StoreKey

Lookups = list[tuple[StoreKey, str]]
Puts = list[tuple[StoreKey, StoredResult]]
Exchange = Callable[[Puts, Lookups], Awaitable[list[StoredResult | None]]]


@dataclass
class _Waiter:
    puts: Puts
    lookups: Lookups
    done: asyncio.Future[list[StoredResult | None]] = field(repr=False)


class CoalescingStore:
    """Lookups and puts of concurrent callers merged into one `exchange` call at a time.

    Must be used from one event loop (a replica's). A failed call fails every caller that
    shared it with the same exception (callers decide what a store outage means).
    """

    def __init__(self, exchange: Exchange, *, max_items_per_call: int = 8192) -> None:
        if max_items_per_call < 1:
            raise ValueError("max_items_per_call must be >= 1")
        self._exchange = exchange
        self._max_items = max_items_per_call
        self._pending: list[_Waiter] = []
        self._flusher: asyncio.Task[None] | None = None
        self.calls = 0
        """Actor calls made so far (for stats and tests)."""

    async def lookup(self, lookups: Sequence[tuple[StoreKey, str]]) -> list[StoredResult | None]:
        """The stored result (or None) for each `(key, fingerprint)`, in order (see
        `TtlResultMap.get_many`); sees every put that returned before this call began."""
        if not lookups:
            return []
        return await self._submit([], list(lookups))

    async def put(self, entries: Sequence[tuple[StoreKey, StoredResult]]) -> None:
        """Store `entries`; returns once the store applied them (see `TtlResultMap.put_many`)."""
        if entries:
            await self._submit(list(entries), [])

    async def _submit(self, puts: Puts, lookups: Lookups) -> list[StoredResult | None]:
        waiter = _Waiter(puts, lookups, asyncio.get_running_loop().create_future())
        self._pending.append(waiter)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await waiter.done

    async def _flush(self) -> None:
        while self._pending:
            group: list[_Waiter] = []
            size = 0
            while self._pending and (not group or size < self._max_items):
                waiter = self._pending.pop(0)
                group.append(waiter)
                size += len(waiter.puts) + len(waiter.lookups)
            puts = [p for w in group for p in w.puts]
            lookups = [lk for w in group for lk in w.lookups]
            self.calls += 1
            try:
                found = await self._exchange(puts, lookups)
                if len(found) != len(lookups):
                    raise RuntimeError(f"store answered {len(found)} of {len(lookups)} lookups")
            except BaseException as exc:  # every caller of the shared call sees the failure
                for w in group:
                    if not w.done.done():
                        w.done.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            start = 0
            for w in group:
                if not w.done.done():
                    w.done.set_result(found[start : start + len(w.lookups)])
                start += len(w.lookups)
