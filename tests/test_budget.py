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


def test_task_and_node_limits_are_named_and_all_apply() -> None:
    """A call must fit the node's and the task's budgets; the first one broken is named."""
    from router.budget import BudgetLedger, limits_for
    from router.policy import BudgetLimit, TaskPolicy

    cost = CostSettings(
        price_per_call=0.5, daily_calls=3, budgets=[BudgetLimit(period="hour", money=1.0)]
    )
    task = TaskPolicy(edge_bundle="b", threshold=0.5, budgets=[BudgetLimit(period="hour", calls=1)])
    limits = limits_for(cost, task, "digits")
    assert [lim.name for lim in limits] == [
        "node/day/calls",
        "node/hour/money",
        "task/digits/hour/calls",
    ]
    ledger = BudgetLedger()
    assert ledger.exhausted(limits, 0.5, NOW) is None
    ledger = ledger.plus_call(limits, 0.5, NOW)
    assert ledger.exhausted(limits, 0.5, NOW) == "task/digits/hour/calls"
    other = limits_for(cost, TaskPolicy(edge_bundle="b", threshold=0.5), "other")
    ledger = ledger.plus_call(other, 0.5, NOW)
    assert ledger.exhausted(other, 0.5, NOW) == "node/hour/money"
    assert ledger.exhausted(other, 0.5, NOW + 3_600) is None  # next hour
    assert ledger.counter("node/day", NOW).calls == 2


def test_release_gives_back_only_in_the_same_period() -> None:
    """minus_call undoes a reservation, but not in a period that has since rolled over."""
    from router.budget import BudgetLedger, limits_for
    from router.policy import BudgetLimit

    cost = CostSettings(price_per_call=1.0, budgets=[BudgetLimit(period="hour", calls=5)])
    limits = limits_for(cost)
    ledger = BudgetLedger().plus_call(limits, 1.0, NOW)
    periods = ledger.periods(limits, NOW)
    assert ledger.minus_call(periods, 1.0).counter("node/hour", NOW).calls == 0
    later = BudgetLedger().plus_call(limits, 1.0, NOW + 3_600)
    assert later.minus_call(periods, 1.0).counter("node/hour", NOW + 3_600).calls == 1
