"""Cost budgets: pure accounting over UTC hours and days, node-wide and per task.

A *counter* (`BudgetState`) holds the calls and money spent in one period; a `BudgetLedger`
maps counter keys (`node/day`, `task/digits/hour`, ...) to counters. A `Limit` caps one
counter in calls or money and has a stable, machine-readable name (`node/day/calls`,
`task/digits/hour/money`) that an exhausted request reports. The edge node owns the durable,
locked ledger and reserves before each cloud call (see edge_node.storage.budget_store); everything
here is pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from router.policy import BudgetLimit, CostSettings, TaskPolicy

DAY_S = 86_400
HOUR_S = 3_600
PERIOD_S = {"hour": HOUR_S, "day": DAY_S}
NODE_DAY = "node/day"  # always counted: the node's spending today (status, demo report)
_EPS = 1e-9


def period_start(now: float, period: str = "day") -> int:
    """Start (UNIX seconds) of the UTC hour or day containing `now`."""
    size = PERIOD_S[period]
    return int(now // size) * size


def period_of(counter: str) -> str:
    """The period (`hour`/`day`) of a counter key such as `task/digits/hour`."""
    return counter.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class BudgetState:
    """Calls and money spent (or reserved) in the period starting at `period`."""

    period: int = 0
    calls: int = 0
    spent: float = 0.0

    def rolled(self, now: float, unit: str = "day") -> BudgetState:
        """This state, reset if `now` is in a later period of length `unit`."""
        start = period_start(now, unit)
        return self if start <= self.period else BudgetState(period=start)

    def plus_call(self, price: float, now: float, unit: str = "day") -> BudgetState:
        """The state after one more call at `price`."""
        cur = self.rolled(now, unit)
        return BudgetState(cur.period, cur.calls + 1, cur.spent + price)

    def minus_call(self, price: float, now: float, unit: str = "day") -> BudgetState:
        """The state after releasing one reserved call (if still in the same period)."""
        cur = self.rolled(now, unit)
        if cur is not self:
            return cur
        return BudgetState(cur.period, max(0, cur.calls - 1), max(0.0, cur.spent - price))


@dataclass(frozen=True, slots=True)
class Limit:
    """A cap on one counter: `name` is `<counter>/<calls|money>`."""

    counter: str
    kind: Literal["calls", "money"]
    limit: float

    @property
    def name(self) -> str:
        """The budget's stable name, e.g. `task/digits/hour/calls`."""
        return f"{self.counter}/{self.kind}"


def _limits_of(prefix: str, budgets: Iterable[BudgetLimit]) -> list[Limit]:
    out: list[Limit] = []
    for b in budgets:
        key = f"{prefix}/{b.period}"
        if b.calls is not None:
            out.append(Limit(key, "calls", float(b.calls)))
        if b.money is not None:
            out.append(Limit(key, "money", b.money))
    return out


def limits_for(
    cost: CostSettings, task: TaskPolicy | None = None, task_name: str | None = None
) -> tuple[Limit, ...]:
    """Every limit a cloud call of `task` must fit: the node's (`daily_calls`,
    `daily_budget`, `cost.budgets`) then the task's own (`tasks.<name>.budgets`)."""
    node: list[BudgetLimit] = []
    if cost.daily_calls is not None or cost.daily_budget is not None:
        node.append(BudgetLimit(period="day", calls=cost.daily_calls, money=cost.daily_budget))
    limits = _limits_of("node", [*node, *cost.budgets])
    if task is not None and task.budgets:
        limits += _limits_of(f"task/{task_name or '_'}", task.budgets)
    return tuple(limits)


@dataclass(frozen=True, slots=True)
class BudgetLedger:
    """Every counter by key. Immutable; operations return new ledgers."""

    counters: Mapping[str, BudgetState] = field(default_factory=lambda: MappingProxyType({}))

    def counter(self, key: str, now: float) -> BudgetState:
        """The counter `key` as of `now` (zero if absent or its period has ended)."""
        state = self.counters.get(key, BudgetState())
        return state.rolled(now, period_of(key))

    def exhausted(self, limits: Iterable[Limit], price: float, now: float) -> str | None:
        """The name of the first limit one more call at `price` would break, else None."""
        for lim in limits:
            cur = self.counter(lim.counter, now)
            used = cur.calls + 1 if lim.kind == "calls" else cur.spent + price
            if used > lim.limit + _EPS:
                return lim.name
        return None

    def plus_call(self, limits: Iterable[Limit], price: float, now: float) -> BudgetLedger:
        """The ledger after one call at `price`, counted in every counter the limits use
        and in `node/day`."""
        keys = {NODE_DAY, *(lim.counter for lim in limits)}
        new = dict(self.counters)
        for key in keys:
            new[key] = self.counter(key, now).plus_call(price, now, period_of(key))
        return BudgetLedger(MappingProxyType(new))

    def minus_call(self, periods: Mapping[str, int], price: float) -> BudgetLedger:
        """The ledger after giving back one call reserved in `periods` (counter -> period
        start); counters whose period has since rolled over are left alone."""
        new = dict(self.counters)
        for key, start in periods.items():
            cur = new.get(key)
            if cur is not None and cur.period == start:
                new[key] = BudgetState(start, max(0, cur.calls - 1), max(0.0, cur.spent - price))
        return BudgetLedger(MappingProxyType(new))

    def periods(self, limits: Iterable[Limit], now: float) -> dict[str, int]:
        """Counter key -> its current period start, for the counters a call touches."""
        keys = {NODE_DAY, *(lim.counter for lim in limits)}
        return {k: period_start(now, period_of(k)) for k in keys}


def budget_left(state: BudgetState, cost: CostSettings, now: float) -> tuple[float, float]:
    """(calls left, money left) today under `daily_calls`/`daily_budget`; inf where unset."""
    cur = state.rolled(now)
    calls = float("inf") if cost.daily_calls is None else cost.daily_calls - cur.calls
    money = float("inf") if cost.daily_budget is None else cost.daily_budget - cur.spent
    return calls, money + 1e-12


def can_spend(state: BudgetState, cost: CostSettings, now: float) -> bool:
    """True if one more call fits in both the daily call and money budget."""
    calls, money = budget_left(state, cost, now)
    return calls >= 1 and money >= cost.price_per_call


def budget_status(
    ledger: BudgetLedger, limits: Iterable[Limit], now: float
) -> dict[str, dict[str, float | int]]:
    """Per budget name: `used`, `limit`, `left` and `period_start` as of `now` (for status)."""
    out: dict[str, dict[str, float | int]] = {}
    for lim in limits:
        cur = ledger.counter(lim.counter, now)
        used: float = cur.calls if lim.kind == "calls" else round(cur.spent, 9)
        out[lim.name] = {
            "used": used,
            "limit": lim.limit,
            "left": max(0.0, lim.limit - used),
            "period_start": period_start(now, period_of(lim.counter)),
        }
    return out


def all_limits(cost: CostSettings, tasks: Mapping[str, TaskPolicy]) -> tuple[Limit, ...]:
    """Every distinct limit of a policy: the node's, then each task's own."""
    seen: dict[str, Limit] = {lim.name: lim for lim in limits_for(cost)}
    for name, task in tasks.items():
        for lim in limits_for(cost, task, name):
            seen.setdefault(lim.name, lim)
    return tuple(seen.values())
