"""The durable cost budget: reserve one cloud call before making it, so concurrent requests
can never overspend, and keep the spending across restarts.

The state (`router.budget.BudgetState`: period, calls, spent) lives in a diskcache directory
(eviction disabled). Every change is a read-modify-write inside a diskcache transaction
(an SQLite write transaction, so safe across processes) taken under an in-process lock.
Periods are UTC days (`router.budget.period_start`); a new day starts from zero.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import diskcache

from router.budget import BudgetState, can_spend
from router.errors import EdgerouteError
from router.policy import CostSettings

_KEY = "budget_state"
Clock = Callable[[], float]


class BudgetStoreError(EdgerouteError):
    """The budget store on disk could not be read or written (diskcache/SQLite failure)."""

    code = "budget_store_error"


class Reservation:
    """One reserved cloud call. Settle it exactly once: `commit()` if the call was made,
    `release()` if it was not. Both are idempotent and thread-safe; after the first
    settlement the other is a no-op. An unsettled reservation stays spent (never overspends).
    """

    def __init__(self, store: BudgetStore, period: int, price: float) -> None:
        self._store = store
        self.period = period
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
            self._store._give_back(self.period, self.price)
            self._state = "released"
            return True


class BudgetStore:
    """A durable, concurrency-safe cost budget in `directory`.

    `reserve` never grants more calls or money than `cost` allows in the current UTC day,
    whatever the number of threads (or processes sharing the directory). All methods are
    thread-safe and raise BudgetStoreError on storage failures.
    """

    def __init__(self, directory: str | Path, cost: CostSettings, *, clock: Clock) -> None:
        self._cost = cost
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self._cache = diskcache.Cache(str(directory), eviction_policy="none")
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

    def reserve(self, now: float | None = None) -> Reservation | None:
        """Atomically add one call at `price_per_call` if it fits in the budget of the day of
        `now` (default: the clock); None if the budget is exhausted."""
        at = self._clock() if now is None else now
        with self._lock:
            cost = self._cost
            try:
                with self._cache.transact():
                    stored = self._load()
                    at = max(at, float(stored.period))  # a clock stepping back never un-rolls
                    state = stored.rolled(at)
                    if not can_spend(state, cost, at):
                        return None
                    state = state.plus_call(cost.price_per_call, at)
                    self._save(state)
            except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
                raise BudgetStoreError(f"cannot reserve budget: {exc}") from exc
        return Reservation(self, state.period, cost.price_per_call)

    def snapshot(self, now: float | None = None) -> BudgetState:
        """The spending of the day of `now` (default: the clock), reservations included."""
        at = self._clock() if now is None else now
        try:
            stored = self._load()
            return stored.rolled(max(at, float(stored.period)))
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            raise BudgetStoreError(f"cannot read budget: {exc}") from exc

    def close(self) -> None:
        """Close the underlying cache (the state stays on disk)."""
        self._cache.close()

    def __enter__(self) -> BudgetStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _give_back(self, period: int, price: float) -> None:
        """Undo one reserved call of `period` (a no-op if that period has already ended)."""
        with self._lock:
            try:
                with self._cache.transact():
                    state = self._load()
                    if state.period == period:
                        self._save(state.minus_call(price, float(period)))
            except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
                raise BudgetStoreError(f"cannot release budget: {exc}") from exc

    def _load(self) -> BudgetState:
        raw = self._cache.get(_KEY)
        if raw is None:
            return BudgetState()
        period, calls, spent = raw
        return BudgetState(int(period), int(calls), float(spent))

    def _save(self, state: BudgetState) -> None:
        self._cache.set(_KEY, (state.period, state.calls, state.spent))
