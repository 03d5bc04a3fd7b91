"""The replica's side of the shared result store: concurrent requests share actor calls.

Each store call is one Ray actor round trip, which on 2 cores costs more CPU than the whole
re-rank of a small model. `CoalescingStore` sends at most one call at a time per replica:
the claims of every request that arrives while a call is in flight travel together in the
next one, with the puts and releases queued since (`settle(puts, releases, claims)`: puts
and releases applied first, then the claims, atomically on the actor).

A claimed request awaits exactly one round trip: its `claim` (a first send awaits none,
see `rerank_flow.answer_with_dedup`). Writing the result back (`put_later`)
and dropping the claim of a failed item (`release_later`) are not awaited: they ride with
the next claim call, or go out on their own after `flush_delay_s` when no claim comes (so
under load they cost no call of their own). Nothing waits on a timer before a claim: a lone
request's claim goes out at once. When the replica says it is busy (`busy()`: other
requests are in progress, so more claims are about to come), a claim lingers up to
`linger_s` for company before the call goes out: fewer actor calls per request when the
CPU is the bottleneck, at the price of at most `linger_s` of latency.

Guarantee kept (see `cloud_service.result_store`): a claimed key is claimed before it is
computed, so once a client has its answer, a later claim of that key on any replica gets
the stored result, or PENDING and waits on the actor until the put arrives. (A first send's
key is not claimed: a claim that reaches the actor before its put is granted.) A put still
queued here is lost if the replica dies; the key's claim is then abandoned and, after the
claim timeout, computed again by whoever asks next; a lost first-send put is simply
computed again by the next claim. Free of Ray: `settle` is injected (the actor method in
a replica, a fake in tests).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from cloud_service.result_store import Outcome, StoredResult, StoreKey

Claims = list[tuple[StoreKey, str]]
Puts = list[tuple[StoreKey, StoredResult]]
Releases = list[StoreKey]
Settle = Callable[[Puts, Releases, Claims], Awaitable[list[Outcome]]]
OnWriteError = Callable[[BaseException], None]


@dataclass
class _Waiter:
    claims: Claims
    done: asyncio.Future[list[Outcome]] = field(repr=False)


class CoalescingStore:
    """Claims of concurrent callers merged into one `settle` call at a time, with the puts
    and releases queued so far.

    Must be used from one event loop (a replica's). A failed call fails every claim that
    shared it with the same exception (callers decide what a store outage means); the puts
    and releases it carried are dropped and reported to `on_write_error`.
    """

    def __init__(
        self,
        settle: Settle,
        *,
        max_items_per_call: int = 8192,
        flush_delay_s: float = 0.1,
        on_write_error: OnWriteError | None = None,
        linger_s: float = 0.0,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        if max_items_per_call < 1:
            raise ValueError("max_items_per_call must be >= 1")
        if flush_delay_s < 0 or linger_s < 0:
            raise ValueError("flush_delay_s and linger_s must be >= 0")
        self._linger_s = linger_s
        self._busy = busy
        self._settle = settle
        self._max_items = max_items_per_call
        self._flush_delay_s = flush_delay_s
        self._on_write_error = on_write_error
        self._pending: list[_Waiter] = []
        self._puts: Puts = []
        self._releases: Releases = []
        self._flusher: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.calls = 0
        """Actor calls made so far (for stats and tests)."""

    async def claim(self, claims: Sequence[tuple[StoreKey, str]]) -> list[Outcome]:
        """`TtlResultMap.claim_many(claims)` on the store, in one awaited round trip (shared
        with concurrent callers); the puts and releases queued before are applied first."""
        if not claims:
            return []
        waiter = _Waiter(list(claims), asyncio.get_running_loop().create_future())
        self._pending.append(waiter)
        if self._linger_s > 0 and self._busy is not None and self._busy():
            self._arm_timer(self._linger_s)
        else:
            self._start_flush()
        return await waiter.done

    def put_later(self, entries: Sequence[tuple[StoreKey, StoredResult]]) -> None:
        """Queue `entries` for the store (not awaited; see the module docstring)."""
        if entries:
            self._puts.extend(entries)
            self._arm_timer(self._flush_delay_s)

    def release_later(self, keys: Sequence[StoreKey]) -> None:
        """Queue the release of the claims of `keys` (not awaited)."""
        if keys:
            self._releases.extend(keys)
            self._arm_timer(self._flush_delay_s)

    @property
    def queued_writes(self) -> int:
        """Puts and releases queued and not sent yet."""
        return len(self._puts) + len(self._releases)

    async def flush(self) -> None:
        """Send the queued puts and releases now and return once the store has applied
        them, or the call carrying them failed (reported to `on_write_error`, not raised)."""
        while (
            self._puts or self._releases or (self._flusher is not None and not self._flusher.done())
        ):
            self._start_flush()
            if self._flusher is not None:
                await asyncio.shield(self._flusher)

    def _arm_timer(self, delay_s: float) -> None:
        """Flush within `delay_s` (unless a call is in flight: it takes the queue along)."""
        if self._flusher is not None and not self._flusher.done():
            return
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            if self._timer.when() <= loop.time() + delay_s:
                return
            self._timer.cancel()
        self._timer = loop.call_later(delay_s, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._start_flush()

    def _start_flush(self) -> None:
        if self._flusher is None or self._flusher.done():
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending or self._puts or self._releases:
            group: list[_Waiter] = []
            size = 0
            while self._pending and (not group or size < self._max_items):
                waiter = self._pending.pop(0)
                group.append(waiter)
                size += len(waiter.claims)
            puts, self._puts = self._puts, []
            releases, self._releases = self._releases, []
            claims = [c for w in group for c in w.claims]
            self.calls += 1
            try:
                found = await self._settle(puts, releases, claims)
                if len(found) != len(claims):
                    raise RuntimeError(f"store answered {len(found)} of {len(claims)} claims")
            except BaseException as exc:  # every caller of the shared call sees the failure
                for w in group:
                    if not w.done.done():
                        w.done.set_exception(exc)
                if (puts or releases) and self._on_write_error is not None:
                    self._on_write_error(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            start = 0
            for w in group:
                if not w.done.done():
                    w.done.set_result(found[start : start + len(w.claims)])
                start += len(w.claims)
