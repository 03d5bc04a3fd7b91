"""Privacy rules in the pure core: `send` in the policy, its decision, the wire item."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from router.decision import (
    CLOUD_NEEDS_INPUTS,
    PRIVACY_EDGE_ONLY,
    Candidate,
    LocalResult,
    NodeState,
    decide,
)
from router.outcome import after
from router.policy import CostSettings, TaskPolicy
from router.wire import RerankItem

NOW = 1_800_000_000.0


def _task(**kw: Any) -> TaskPolicy:
    return TaskPolicy(**{"edge_bundle": "b", "threshold": 0.5, **kw})


def _local(conf: float) -> LocalResult:
    return LocalResult((Candidate("7", 0.9),), {"margin": conf, "max_prob": conf, "entropy": conf})


def test_send_defaults_to_inputs_and_rejects_unknown_values() -> None:
    """`send` defaults to inputs; only inputs / candidates_only / nothing are accepted."""
    assert _task().send == "inputs"
    with pytest.raises(ValidationError):
        _task(send="everything")


@given(
    conf=st.floats(0.0, 1.0),
    conn=st.sampled_from(["online", "degraded", "offline"]),
    placement=st.sampled_from(["edge_only", "hybrid", "cloud_first"]),
    when_offline=st.sampled_from(["answer_and_queue", "queue_only", "answer_only"]),
    left=st.floats(0.0, 10_000.0),
)
def test_send_nothing_never_escalates_nor_queues(
    conf: float, conn: Any, placement: Any, when_offline: Any, left: float
) -> None:
    """Whatever the score, connectivity, placement, when_offline or deadline, `send: nothing`
    answers on the edge, finally, with reason privacy_edge_only, and never escalates (so never
    reserves budget)."""
    task = _task(send="nothing", placement=placement, when_offline=when_offline)
    d = decide(_local(conf), NodeState(conn), task, left)
    assert (d.route, d.reason) == ("edge", PRIVACY_EDGE_ONLY)
    assert not (d.escalate or d.enqueue or d.reject) and d.answer_now and d.final


def test_inputs_required_answers_locally_and_finally() -> None:
    """After an `inputs_required` refusal the edge answers locally, final, never queued."""
    d = decide(_local(0.1), NodeState(), _task(send="candidates_only"))
    assert d.escalate
    then = after(d, "inputs_required", _task(send="candidates_only"), CostSettings())
    assert (then.route, then.reason, then.enqueue, then.final) == (
        "edge",
        CLOUD_NEEDS_INPUTS,
        False,
        True,
    )


def test_rerank_item_inputs_optional_but_never_empty() -> None:
    """A wire item may omit its inputs (candidates only) but not send an empty list."""
    assert RerankItem(task="t", request_id="r", candidates=["7"]).inputs is None
    with pytest.raises(ValidationError):
        RerankItem(task="t", request_id="r", inputs=[])
