"""The pure decision function and what follows each cloud outcome: every rule and its reason."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from router.budget import BudgetLedger, BudgetState, limits_for, period_start
from router.decision import Candidate, Decision, LocalResult, NodeState, decide
from router.errors import CloudRejected, CloudTimeout, CloudUnauthorized, CloudUnavailable
from router.outcome import after, breaker_effect, settle, sync_effect
from router.policy import CostSettings, TaskPolicy
from router.wire import RerankResult

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
    d = decide(local(0.5), NodeState(), task())
    assert (d.route, d.reason, d.escalate, d.enqueue) == ("edge", "confident", False, False)


def test_below_threshold_escalates_when_online() -> None:
    """A low score escalates to the cloud when online and within budget."""
    d = decide(local(0.49), NodeState(), task())
    assert (d.route, d.reason, d.escalate) == ("cloud", "below_threshold", True)


def test_edge_only_never_escalates() -> None:
    """An edge_only task answers locally even with zero confidence."""
    d = decide(local(0.0), NodeState(), task(placement="edge_only"))
    assert (d.route, d.reason) == ("edge", "edge_only_task")


def test_cloud_first_escalates_even_when_confident() -> None:
    """cloud_first sends confident requests to the cloud too."""
    d = decide(local(0.99), NodeState(), task(placement="cloud_first"))
    assert (d.route, d.reason) == ("cloud", "cloud_first")


def test_offline_queues_with_provisional_answer() -> None:
    """Offline + answer_and_queue: queued, answered now, not final."""
    d = decide(local(0.1), NodeState("offline"), task())
    assert (d.route, d.reason, d.enqueue, d.answer_now, d.final) == (
        "queued",
        "cloud_unreachable",
        True,
        True,
        False,
    )


def test_offline_queue_only_answers_later() -> None:
    """Offline + queue_only: queued with no answer now (202)."""
    d = decide(local(0.1), NodeState("offline"), task(when_offline="queue_only"))
    assert (d.route, d.enqueue, d.answer_now) == ("queued", True, False)


def test_offline_answer_only_does_not_queue() -> None:
    """Offline + answer_only: a final local answer, nothing queued."""
    d = decide(local(0.1), NodeState("offline"), task(when_offline="answer_only"))
    assert (d.route, d.reason, d.enqueue) == ("edge", "cloud_unreachable", False)


def test_degraded_still_escalates() -> None:
    """Degraded connectivity (recent failures, breaker closed) still tries the cloud."""
    d = decide(local(0.1), NodeState("degraded"), task())
    assert d.route == "cloud"


def _day(state: BudgetState) -> BudgetLedger:
    return BudgetLedger({"node/day": state})


def _after_reservation(cost: CostSettings, ledger: BudgetLedger) -> Decision:
    """What the node does for a request below threshold: decide, then reserve the budget
    (here: check the ledger as the reservation does) and apply `after` when refused."""
    d = decide(local(0.1), NodeState(), task())
    spent = ledger.exhausted(limits_for(cost, task(), None), cost.price_per_call, NOW)
    return d if spent is None else after(d, "budget_exhausted", task(), cost, budget=spent)


def test_budget_exhausted_answers_locally_by_default() -> None:
    """With the call budget spent, the default action answers locally."""
    spent = BudgetState(period_start(NOW), calls=10, spent=0.0)
    d = _after_reservation(CostSettings(daily_calls=10), _day(spent))
    assert (d.route, d.reason, d.escalate) == ("edge", "budget_exhausted", False)
    assert d.budget == "node/day/calls"


def test_budget_exhausted_queue_and_reject_actions() -> None:
    """on_budget_exhausted=queue enqueues; =reject rejects."""
    spent = BudgetState(period_start(NOW), calls=0, spent=1.0)
    cost_q = CostSettings(price_per_call=0.5, daily_budget=1.0, on_budget_exhausted="queue")
    cost_r = CostSettings(price_per_call=0.5, daily_budget=1.0, on_budget_exhausted="reject")
    assert _after_reservation(cost_q, _day(spent)).enqueue
    assert _after_reservation(cost_r, _day(spent)).reject


def test_budget_resets_next_day() -> None:
    """Yesterday's spending does not count today."""
    spent = BudgetState(period_start(NOW) - 86_400, calls=10)
    d = _after_reservation(CostSettings(daily_calls=10), _day(spent))
    assert d.route == "cloud"


def test_short_deadline_answers_locally() -> None:
    """Too little time left for a cloud call: local answer, reason deadline_too_short."""
    d = decide(local(0.1), NodeState(), task(min_cloud_ms=50), deadline_left_ms=49)
    assert (d.route, d.reason) == ("edge", "deadline_too_short")


def test_cloud_failure_falls_back_and_queues_for_verification() -> None:
    """A failed escalation answers locally and is queued when the policy says so."""
    d = decide(local(0.1), NodeState(), task())
    timed_out = after(d, "cloud_timeout", task(), CostSettings())
    errored = after(d, "cloud_error", task(verify_on_cloud_failure=False), CostSettings())
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
    d = decide(local(conf), NodeState(conn), t, left)
    ledger = _day(BudgetState(period_start(NOW), calls=calls))
    cost = CostSettings(daily_calls=10)
    spent = ledger.exhausted(limits_for(cost, t, None), cost.price_per_call, NOW)
    if d.escalate and spent is not None:
        d = after(d, "budget_exhausted", t, cost, budget=spent)
    assert d.escalate == (d.route == "cloud")
    if d.route == "queued":
        assert d.enqueue
    if placement == "edge_only":
        assert d.route == "edge"
    if d.escalate:
        assert conn != "offline" and calls < 10 and left >= t.min_cloud_ms


def test_decide_never_reads_the_budget() -> None:
    """decide has no budget input: a request that needs the cloud is routed to it, and the
    budget is settled at the reservation (after)."""
    assert decide(local(0.1), NodeState(), task()).route == "cloud"
    assert not hasattr(NodeState(), "budget")


def test_after_breaker_refused_follows_when_offline() -> None:
    """A refused breaker at call time gives the task's when_offline decision."""
    d = decide(local(0.1), NodeState(), task())
    queued = after(d, "breaker_refused", task(), CostSettings())
    answered = after(d, "breaker_refused", task(when_offline="answer_only"), CostSettings())
    assert (queued.route, queued.reason, queued.enqueue) == ("queued", "cloud_unreachable", True)
    assert (answered.route, answered.enqueue) == ("edge", False)


def test_after_queue_full_rejects_queued_routes_and_answers_verifications() -> None:
    """A full queue rejects a queued route and answers a verification locally, final."""
    offline = decide(local(0.1), NodeState("offline"), task())
    refused = after(offline, "queue_full", task(), CostSettings())
    assert (refused.reject, refused.reason) == (True, "queue_full")
    failed = after(decide(local(0.1), NodeState(), task()), "cloud_error", task(), CostSettings())
    kept = after(failed, "queue_full", task(), CostSettings())
    assert (kept.route, kept.reason, kept.enqueue, kept.final) == (
        "edge",
        "cloud_error",
        False,
        True,
    )


def test_after_request_id_conflict_rejects_without_an_answer() -> None:
    """An id the cloud holds for another item is rejected, never answered or queued."""
    d = decide(local(0.1), NodeState(), task())
    refused = after(d, "request_id_conflict", task(), CostSettings())
    assert (refused.reject, refused.reason, refused.enqueue) == (
        True,
        "request_id_conflict",
        False,
    )


def _result(cached: bool) -> RerankResult:
    return RerankResult(
        request_id="r", task="t", label="7", score=0.9, candidates=[], model_version="v",
        scored="all_labels", cached=cached,
    )  # fmt: skip


def test_settle_commits_only_fresh_answers() -> None:
    """A fresh cloud answer commits its charge; a cached answer or no answer releases it."""
    assert settle(_result(cached=False)) == "commit"
    assert settle(_result(cached=True)) == "release"
    assert settle(None) == "release"


def test_breaker_counts_retryable_errors_only() -> None:
    """Only retryable errors are breaker failures; answers and refusals show reachability."""
    assert breaker_effect(None) == "success"
    assert breaker_effect(CloudRejected("unauthorized")) == "success"
    assert breaker_effect(CloudUnavailable("down")) == "failure"
    assert breaker_effect(CloudTimeout("slow")) == "failure"
    assert breaker_effect(CloudUnauthorized("401")) == "credentials_rejected"


def test_sync_effect_never_charges_items_for_credentials() -> None:
    """Refused credentials pause the sync; only an item refusal costs the items an attempt."""
    assert sync_effect(CloudUnauthorized("401")) == "pause_credentials"
    assert sync_effect(CloudUnavailable("down")) == "retry_later"
    assert sync_effect(CloudTimeout("slow")) == "retry_later"
    assert sync_effect(CloudRejected("422")) == "count_attempt"
