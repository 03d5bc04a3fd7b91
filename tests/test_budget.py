"""Pure budget accounting."""

from __future__ import annotations

from router.budget import BudgetState, budget_left, can_spend, period_start
from router.policy import CostSettings

NOW = 1_800_000_000.0


def test_plus_and_minus_call_round_trip() -> None:
    """Reserving then releasing a call restores the state."""
    s = BudgetState(period_start(NOW)).plus_call(0.5, NOW)
    assert (s.calls, s.spent) == (1, 0.5)
    back = s.minus_call(0.5, NOW)
    assert (back.calls, back.spent) == (0, 0.0)


def test_money_budget_blocks_the_call_that_would_overspend() -> None:
    """A call is allowed only if its full price fits in what is left."""
    cost = CostSettings(price_per_call=0.4, daily_budget=1.0)
    s = BudgetState(period_start(NOW), calls=2, spent=0.8)
    assert not can_spend(s, cost, NOW)
    assert can_spend(BudgetState(period_start(NOW), calls=1, spent=0.4), cost, NOW)


def test_no_budget_is_unlimited() -> None:
    """Without budgets, calls and money left are infinite."""
    calls, money = budget_left(BudgetState(), CostSettings(), NOW)
    assert calls == float("inf") and money == float("inf")
