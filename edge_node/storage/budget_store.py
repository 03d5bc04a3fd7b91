"""The durable cost budgets: reserve one cloud call before making it, so concurrent requests
can never overspend, and keep the spending across restarts.

The state (`router.budget.BudgetLedger`: one counter of calls and money per node/task and
hour/day) is one row of a diskcache directory (eviction disabled), stored as JSON bytes.
Every change is a compare-and-swap: the new ledger is computed from the last one this
store read or wrote, and written with one SQLite statement that succeeds only if the row
still holds exactly those bytes; if another store (another process) changed it in between,
the row is read again and the change retried. So a reservation costs one statement when
this store is the only writer (as in a node, whose data dir is locked to one process:
`edge_node.storage.data_dir_lock`), and concurrent stores on one directory still never overspend.
Within a process, changes are serialised by a lock. Periods are UTC hours and days
(`router.budget.period_start`); a new period starts from zero.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import diskcache
import orjson

from edge_node.storage.durable_cache import (
    DB_FILE,
    StoreCorrupt,
    compare_and_set,
    get_many,
    open_durable_cache,
    put_many,
)
from router.budget import NODE_DAY, BudgetLedger, BudgetState, Limit, limits_for
from router.errors import EdgerouteError
from router.policy import CostSettings

_KEY = "budget_ledger"
Clock = Callable[[], float]


class BudgetStoreError(EdgerouteError):
    """The budget store on disk could not be read or written (diskcache/SQLite failure)."""

    status = 503
    code = "budget_store_error"


class Reservation:
    """One reserved cloud call. Settle it exactly once: `commit()` if the call was made,
    `release()` if it was not. Both are idempotent and thread-safe; after the first
    settlement the other is a no-op. An unsettled reservation stays spent (never overspends).
    """

    def __init__(self, store: BudgetStore, periods: dict[str, int], price: float) -> None:
        self._store = store
        self.periods = periods  # counter key -> period start it was reserved in
        self.price = price
        self._lock = threading.Lock()
        self._state: Literal["pending", "committed", "released"] = "pending"

    @property
    def state(self) -> Literal["pending", "committed", "released"]:
        """pending, committed or released."""
        return self._state

    def commit(self) -> None:
        """Keep the reservation: the call was made."""
        with self._lock:
            if self._state == "pending":
                self._state = "committed"

    def release(self) -> bool:
        """Give the call back (it was not made). True if this call released it; False if it
        was already settled. Raises BudgetStoreError if the store cannot be written."""
        with self._lock:
            if self._state != "pending":
                return False
            self._store._give_back(self.periods, self.price)
            self._state = "released"
            return True


class BudgetStore:
    """A durable, concurrency-safe cost budget in `directory`.

    `reserve` never grants more calls or money than any of its limits allows in the current
    UTC hour/day, whatever the number of threads (or processes sharing the directory). All
    methods are thread-safe and raise BudgetStoreError on storage failures.
    """

    def __init__(self, directory: str | Path, cost: CostSettings, *, clock: Clock) -> None:
        self._cost = cost
        self._clock = clock
        self._lock = threading.Lock()
        self._known: tuple[bytes | None, BudgetLedger] | None = None  # last read or written
        try:
            self._cache = open_durable_cache(directory, store="budget")
        except StoreCorrupt:
            raise
        except (OSError, sqlite3.Error) as exc:
            raise BudgetStoreError(f"cannot open budget store: {exc}") from exc
        try:
            self._known = self._load()
        except BaseException:
            self._cache.close()
            raise

    @property
    def cost(self) -> CostSettings:
        """The cost settings in force."""
        return self._cost

    def update_cost(self, cost: CostSettings) -> None:
        """Use new cost settings from now on (policy reload); spending so far is kept."""
        with self._lock:
            self._cost = cost

    def reserve(
        self,
        now: float | None = None,
        *,
        limits: tuple[Limit, ...] | None = None,
        price: float | None = None,
    ) -> Reservation | None:
        """Atomically count one call at `price` in every counter `limits` use if it fits all
        of them in the periods of `now` (default: the clock); None if any is exhausted.

        `limits`/`price` default to the node-wide limits of the cost settings in force
        (`router.budget.limits_for`); the service passes the request's task limits.
        """
        at = self._clock() if now is None else now
        with self._lock:
            cost = self._cost
            lims = limits_for(cost) if limits is None else limits
            pay = cost.price_per_call if price is None else price
            try:
                from_disk = self._known is None
                while True:
                    raw, ledger = self._current()
                    at = max(at, self._latest(ledger))  # a clock stepping back never un-rolls
                    if ledger.exhausted(lims, pay, at) is not None:
                        if from_disk:
                            return None
                        self._known = None  # refuse only on what is on disk now
                    elif self._swap(raw, ledger.plus_call(lims, pay, at)):
                        break
                    from_disk = True  # the known ledger was dropped: the next is read
            except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
                self._known = None
                raise BudgetStoreError(f"cannot reserve budget: {exc}") from exc
        return Reservation(self, ledger.periods(lims, at), pay)

    def reserve_many(
        self, now: float, calls: Sequence[tuple[tuple[Limit, ...], float]]
    ) -> list[Reservation | None]:
        """`reserve` for several calls (`(limits, price)` each) in one atomic write: in
        order, each call is counted if it fits every counter it uses after the calls
        before it, else it gets None. One transaction for the whole batch (a sync round
        reserves its items at once); the same guarantees as `reserve`."""
        if not calls:
            return []
        with self._lock:
            try:
                from_disk = self._known is None
                while True:
                    raw, ledger = self._current()
                    at = max(now, self._latest(ledger))
                    after, held = ledger, list[Reservation | None]()
                    for lims, pay in calls:
                        if after.exhausted(lims, pay, at) is None:
                            after = after.plus_call(lims, pay, at)
                            held.append(Reservation(self, after.periods(lims, at), pay))
                        else:
                            held.append(None)
                    if any(h is None for h in held) and not from_disk:
                        self._known = None  # refuse only on what is on disk now
                        from_disk = True
                        continue
                    if after is ledger or self._swap(raw, after):
                        return held
                    from_disk = True
            except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
                self._known = None
                raise BudgetStoreError(f"cannot reserve budget: {exc}") from exc

    def ledger(self, now: float | None = None) -> BudgetLedger:
        """Every counter as stored (reservations included), read from disk. Counters are
        rolled lazily: use `BudgetLedger.counter(key, now)` to read one as of a time."""
        with self._lock:
            try:
                self._known = self._load()
                return self._known[1]
            except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
                raise BudgetStoreError(f"cannot read budget: {exc}") from exc

    def known_ledger(self) -> BudgetLedger:
        """The ledger as this store last read or wrote it, without touching the disk once it
        has been read (the first call reads it). Exact while this store is the only writer
        of the directory; a change made by another store is seen by the next `reserve` (which
        never overspends either way) or `ledger`. For the routing decision's budget rule."""
        with self._lock:
            try:
                return self._current()[1]
            except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
                raise BudgetStoreError(f"cannot read budget: {exc}") from exc

    def snapshot(self, now: float | None = None) -> BudgetState:
        """The node's spending in the UTC day of `now` (default: the clock), reservations
        included."""
        at = self._clock() if now is None else now
        ledger = self.ledger()
        return ledger.counter(NODE_DAY, max(at, self._latest(ledger)))

    @staticmethod
    def _latest(ledger: BudgetLedger) -> float:
        return float(max((c.period for c in ledger.counters.values()), default=0))

    def close(self) -> None:
        """Close the underlying cache (the state stays on disk)."""
        self._cache.close()

    def __enter__(self) -> BudgetStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _give_back(self, periods: dict[str, int], price: float) -> None:
        """Undo one reserved call in each counter of `periods` whose period is still open."""
        with self._lock:
            try:
                while True:
                    raw, ledger = self._current()
                    if self._swap(raw, ledger.minus_call(periods, price)):
                        return
            except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
                self._known = None
                raise BudgetStoreError(f"cannot release budget: {exc}") from exc

    def _current(self) -> tuple[bytes | None, BudgetLedger]:
        """The stored bytes (None if there is no row) and the ledger: the last known ones,
        else read with one SELECT. Under `_lock`."""
        if self._known is None:
            self._known = self._load()
        return self._known

    def _load(self) -> tuple[bytes | None, BudgetLedger]:
        """The stored ledger: one SELECT of its JSON bytes. Raises `StoreCorrupt` if the
        row cannot be decoded (never taken as zero spend), BudgetStoreError if it cannot be
        read."""
        try:
            raw: bytes | None = get_many(self._cache, [_KEY]).get(_KEY)
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            raise BudgetStoreError(f"cannot read budget store: {exc}") from exc
        if not raw:
            return raw, BudgetLedger()
        try:
            counters = orjson.loads(raw)
            return raw, BudgetLedger(
                {k: BudgetState(int(p), int(c), float(s)) for k, (p, c, s) in counters.items()}
            )
        except (ValueError, TypeError, AttributeError) as exc:
            path = Path(self._cache.directory) / DB_FILE
            problem = f"its ledger row cannot be decoded ({type(exc).__name__})"
            raise StoreCorrupt("budget", path, problem) from None

    def _swap(self, old: bytes | None, ledger: BudgetLedger) -> bool:
        """Store `ledger` if the row still holds `old` (the bytes it was computed from);
        True if stored. One UPDATE when `old` is bytes; when there was no JSON row yet, a
        transaction that checks and writes. On False the known ledger is dropped, so the
        next `_current` reads the disk. Under `_lock`; raises what SQLite raises."""
        data = orjson.dumps({k: (s.period, s.calls, s.spent) for k, s in ledger.counters.items()})
        if old is not None:
            done = compare_and_set(self._cache, _KEY, old, data)
        else:
            with self._cache.transact():
                done = self._load()[0] is None  # still no JSON row: nobody wrote meanwhile
                if done:
                    put_many(self._cache, [(_KEY, data)])
        self._known = (data, ledger) if done else None
        return bool(done)
