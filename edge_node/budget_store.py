"""The durable cost budgets: reserve one cloud call before making it, so concurrent requests
can never overspend, and keep the spending across restarts.

The state (`router.budget.BudgetLedger`: one counter of calls and money per node/task and
hour/day) lives in a diskcache directory (eviction disabled). Every change is a
read-modify-write inside a diskcache transaction (an SQLite write transaction, so safe
across processes) taken under an in-process lock. Periods are UTC hours and days
(`router.budget.period_start`); a new period starts from zero.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import diskcache
import orjson

from edge_node.durable_cache import get_many, open_durable_cache, put_many
from router.budget import NODE_DAY, BudgetLedger, BudgetState, Limit, limits_for
from router.errors import EdgerouteError
from router.policy import CostSettings

_KEY = "budget_ledger"
Clock = Callable[[], float]


class BudgetStoreError(EdgerouteError):
    """The budget store on disk could not be read or written (diskcache/SQLite failure)."""

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
        try:
            self._cache = open_durable_cache(directory)
        except (OSError, sqlite3.Error) as exc:
            raise BudgetStoreError(f"cannot open budget store: {exc}") from exc

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
                with self._cache.transact():
                    ledger = self._load()
                    at = max(at, self._latest(ledger))  # a clock stepping back never un-rolls
                    if ledger.exhausted(lims, pay, at) is not None:
                        return None
                    self._save(ledger.plus_call(lims, pay, at))
            except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
                raise BudgetStoreError(f"cannot reserve budget: {exc}") from exc
        return Reservation(self, ledger.periods(lims, at), pay)

    def ledger(self, now: float | None = None) -> BudgetLedger:
        """Every counter as stored (reservations included). Counters are rolled lazily:
        use `BudgetLedger.counter(key, now)` to read one as of a time."""
        try:
            return self._load()
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
                with self._cache.transact():
                    self._save(self._load().minus_call(periods, price))
            except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
                raise BudgetStoreError(f"cannot release budget: {exc}") from exc

    def _load(self) -> BudgetLedger:
        """The stored ledger: one SELECT (JSON bytes; a pickled dict written by an older
        version is read too)."""
        raw: object = get_many(self._cache, [_KEY]).get(_KEY)
        if raw is None:
            raw = self._cache.get(_KEY)  # not raw bytes: an older version's pickled dict
        if not raw:
            return BudgetLedger()
        counters = orjson.loads(raw) if isinstance(raw, bytes) else dict(raw)  # type: ignore[call-overload]
        return BudgetLedger(
            {k: BudgetState(int(p), int(c), float(s)) for k, (p, c, s) in counters.items()}
        )

    def _save(self, ledger: BudgetLedger) -> None:
        """Store the ledger as JSON bytes: one INSERT (diskcache's `set` runs about seven
        statements), joining the caller's transaction."""
        data = {k: (s.period, s.calls, s.spent) for k, s in ledger.counters.items()}
        put_many(self._cache, [(_KEY, orjson.dumps(data))])
