"""Cost budgets: pure accounting over per-day periods (UTC).

`BudgetState` is a snapshot of what was spent in the current period; the edge node owns
the durable, locked copy and reserves before each cloud call (see edge_node.budget_store).
"""

from __future__ import annotations

from dataclasses import dataclass

from router.policy import CostSettings

DAY_S = 86_400


def period_start(now: float) -> int:
    """Start (UNIX seconds) of the UTC day containing `now`."""
    return int(now // DAY_S) * DAY_S


@dataclass(frozen=True, slots=True)
class BudgetState:
    """Calls and money spent (or reserved) in the period starting at `period`."""

    period: int = 0
    calls: int = 0
    spent: float = 0.0

    def rolled(self, now: float) -> BudgetState:
        """This state, reset if `now` is in a later period."""
        start = period_start(now)
        return self if start == self.period else BudgetState(period=start)

    def plus_call(self, price: float, now: float) -> BudgetState:
        """The state after one more call at `price`."""
        cur = self.rolled(now)
        return BudgetState(cur.period, cur.calls + 1, cur.spent + price)

    def minus_call(self, price: float, now: float) -> BudgetState:
        """The state after releasing one reserved call (if still in the same period)."""
        cur = self.rolled(now)
        if cur is not self:
            return cur
        return BudgetState(cur.period, max(0, cur.calls - 1), max(0.0, cur.spent - price))


def budget_left(state: BudgetState, cost: CostSettings, now: float) -> tuple[float, float]:
    """(calls left, money left) in the current period; inf where no budget is set."""
    cur = state.rolled(now)
    calls = float("inf") if cost.daily_calls is None else cost.daily_calls - cur.calls
    money = float("inf") if cost.daily_budget is None else cost.daily_budget - cur.spent
    return calls, money + 1e-12


def can_spend(state: BudgetState, cost: CostSettings, now: float) -> bool:
    """True if one more call fits in both the call and the money budget."""
    calls, money = budget_left(state, cost, now)
    return calls >= 1 and money >= cost.price_per_call
