"""The pure decision function: every rule and its reason."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from router.budget import BudgetLedger, BudgetState, period_start
from router.decision import Candidate, LocalResult, NodeState, decide, on_cloud_failure
from router.policy import CostSettings, TaskPolicy

NOW = 1_800_000_000.0


def task(**kw: Any) -> TaskPolicy:
    base: dict[str, Any] = {"edge_bundle": "b", "threshold": 0.5, "score": "margin"}
    return TaskPolicy(**{**base, **kw})


def local(confidence: float) -> LocalResult:
    return LocalResult(
        (Candidate("7", 0.9), Candidate("1", 0.1)),
        {"margin": confidence, "max_prob": confidence, "entropy": confidence},
    )


def test_confident_answers_on_edge() -> None:
    """A score at or above the threshold stays on the edge with reason confident."""
    d = decide(local(0.5), NodeState(), task(), CostSettings(), NOW)
    assert (d.route, d.reason, d.escalate, d.enqueue) == ("edge", "confident", False, False)


def test_below_threshold_escalates_when_online() -> None:
    """A low score escalates to the cloud when online and within budget."""
    d = decide(local(0.49), NodeState(), task(), CostSettings(), NOW)
    assert (d.route, d.reason, d.escalate) == ("cloud", "below_threshold", True)


def test_edge_only_never_escalates() -> None:
    """An edge_only task answers locally even with zero confidence."""
    d = decide(local(0.0), NodeState(), task(placement="edge_only"), CostSettings(), NOW)
    assert (d.route, d.reason) == ("edge", "edge_only_task")


def test_cloud_first_escalates_even_when_confident() -> None:
    """cloud_first sends confident requests to the cloud too."""
    d = decide(local(0.99), NodeState(), task(placement="cloud_first"), CostSettings(), NOW)
    assert (d.route, d.reason) == ("cloud", "cloud_first")


def test_offline_queues_with_provisional_answer() -> None:
    """Offline + answer_and_queue: queued, answered now, not final."""
    d = decide(local(0.1), NodeState("offline"), task(), CostSettings(), NOW)
    assert (d.route, d.reason, d.enqueue, d.answer_now, d.final) == (
        "queued",
        "cloud_unreachable",
        True,
        True,
        False,
    )


def test_offline_queue_only_answers_later() -> None:
    """Offline + queue_only: queued with no answer now (202)."""
    d = decide(
        local(0.1), NodeState("offline"), task(when_offline="queue_only"), CostSettings(), NOW
    )
    assert (d.route, d.enqueue, d.answer_now) == ("queued", True, False)


def test_offline_answer_only_does_not_queue() -> None:
    """Offline + answer_only: a final local answer, nothing queued."""
    d = decide(
        local(0.1), NodeState("offline"), task(when_offline="answer_only"), CostSettings(), NOW
    )
    assert (d.route, d.reason, d.enqueue) == ("edge", "cloud_unreachable", False)


def test_degraded_still_escalates() -> None:
    """Degraded connectivity (recent failures, breaker closed) still tries the cloud."""
    d = decide(local(0.1), NodeState("degraded"), task(), CostSettings(), NOW)
    assert d.route == "cloud"


def _day(state: BudgetState) -> BudgetLedger:
    return BudgetLedger({"node/day": state})


def test_budget_exhausted_answers_locally_by_default() -> None:
    """With the call budget spent, the default action answers locally."""
    spent = BudgetState(period_start(NOW), calls=10, spent=0.0)
    d = decide(local(0.1), NodeState(budget=_day(spent)), task(), CostSettings(daily_calls=10), NOW)
    assert (d.route, d.reason, d.escalate) == ("edge", "budget_exhausted", False)
    assert d.budget == "node/day/calls"


def test_budget_exhausted_queue_and_reject_actions() -> None:
    """on_budget_exhausted=queue enqueues; =reject rejects."""
    spent = BudgetState(period_start(NOW), calls=0, spent=1.0)
    cost_q = CostSettings(price_per_call=0.5, daily_budget=1.0, on_budget_exhausted="queue")
    cost_r = CostSettings(price_per_call=0.5, daily_budget=1.0, on_budget_exhausted="reject")
    assert decide(local(0.1), NodeState(budget=_day(spent)), task(), cost_q, NOW).enqueue
    assert decide(local(0.1), NodeState(budget=_day(spent)), task(), cost_r, NOW).reject


def test_budget_resets_next_day() -> None:
    """Yesterday's spending does not count today."""
    spent = BudgetState(period_start(NOW) - 86_400, calls=10)
    d = decide(local(0.1), NodeState(budget=_day(spent)), task(), CostSettings(daily_calls=10), NOW)
    assert d.route == "cloud"


def test_short_deadline_answers_locally() -> None:
    """Too little time left for a cloud call: local answer, reason deadline_too_short."""
    d = decide(
        local(0.1), NodeState(), task(min_cloud_ms=50), CostSettings(), NOW, deadline_left_ms=49
    )
    assert (d.route, d.reason) == ("edge", "deadline_too_short")


def test_cloud_failure_falls_back_and_queues_for_verification() -> None:
    """A failed escalation answers locally and is queued when the policy says so."""
    d = decide(local(0.1), NodeState(), task(), CostSettings(), NOW)
    timed_out = on_cloud_failure(d, task(), timed_out=True)
    errored = on_cloud_failure(d, task(verify_on_cloud_failure=False), timed_out=False)
    assert (timed_out.route, timed_out.reason, timed_out.enqueue) == ("edge", "cloud_timeout", True)
    assert (errored.reason, errored.enqueue) == ("cloud_error", False)


@given(
    conf=st.floats(0, 1),
    threshold=st.floats(0, 1),
    conn=st.sampled_from(["online", "degraded", "offline"]),
    placement=st.sampled_from(["edge_only", "hybrid", "cloud_first"]),
    calls=st.integers(0, 20),
    left=st.floats(0, 2000),
)
def test_decide_is_total_and_consistent(
    conf: float, threshold: float, conn: Any, placement: Any, calls: int, left: float
) -> None:
    """decide never raises, and its flags agree with its route."""
    t = task(threshold=threshold, placement=placement)
    state = NodeState(conn, _day(BudgetState(period_start(NOW), calls=calls)))
    d = decide(local(conf), state, t, CostSettings(daily_calls=10), NOW, left)
    assert d.escalate == (d.route == "cloud")
    if d.route == "queued":
        assert d.enqueue
    if placement == "edge_only":
        assert d.route == "edge"
    if d.escalate:
        assert conn != "offline" and calls < 10 and left >= t.min_cloud_ms


def test_budget_ledger_is_read_only_when_the_budget_rule_is_reached() -> None:
    """A ledger provider is not called for confident or edge-only requests, nor when no
    budget limits apply, and is called (once) for a request that needs the cloud under a
    limit."""
    reads: list[int] = []

    def ledger() -> BudgetLedger:
        reads.append(1)
        return BudgetLedger()

    state = NodeState("online", ledger)
    decide(local(0.9), state, task(), CostSettings(), NOW)
    decide(local(0.0), state, task(placement="edge_only"), CostSettings(), NOW)
    assert reads == []
    assert decide(local(0.1), state, task(), CostSettings(), NOW).route == "cloud"
    assert reads == []
    limited = CostSettings(daily_calls=5)
    assert decide(local(0.1), state, task(), limited, NOW).route == "cloud"
    assert reads == [1]
