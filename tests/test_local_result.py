"""The edge's local result: top-k ranking and the scores a decision reads, nothing more."""

from __future__ import annotations

import numpy as np
import pytest

from router.learned_score import LearnedScore
from router.local_result import complete_scores, local_result, local_results_many
from router.policy import TaskPolicy
from router.scores import all_scores

LABELS = ["a", "b", "c", "d"]
PROBS = [0.1, 0.4, 0.4, 0.1]


def _task(**over: object) -> TaskPolicy:
    fields: dict[str, object] = {"edge_bundle": "x", "threshold": 0.5, "top_k": 3}
    fields.update(over)
    return TaskPolicy.model_validate(fields)


def test_ties_keep_label_order_best_first() -> None:
    """Equal probabilities rank in label order; the list is cut at top_k."""
    res = local_result(PROBS, LABELS, _task())
    assert [c.label for c in res.candidates] == ["b", "c", "a"]


def test_only_the_tasks_score_is_computed() -> None:
    """Without a learned score, the result holds exactly the task's score, correct."""
    res = local_result(PROBS, LABELS, _task(score="entropy"))
    assert res.scores == {"entropy": all_scores(PROBS)["entropy"]}


def test_learned_score_gets_every_score_it_needs() -> None:
    """With a learned score, every registered score and the learned one are present."""
    names = ("max_prob", "margin", "entropy", "top2", "top3", *(f"label={x}" for x in LABELS))
    learned = LearnedScore(names, tuple(LABELS), (0.0,) * len(names), 0.0)
    res = local_result(PROBS, LABELS, _task(score="learned", learned_score="l.json"), learned)
    assert set(res.scores) == {*all_scores(PROBS), "learned"}
    assert res.scores["learned"] == 0.5


def test_complete_scores_keeps_computed_ones() -> None:
    """complete_scores adds the missing scores and keeps those already given."""
    out = complete_scores(PROBS, {"learned": 0.9, "margin": 0.0})
    assert out["learned"] == 0.9 and out["margin"] == 0.0
    assert out["entropy"] == all_scores(PROBS)["entropy"]


def test_batched_local_results_equal_the_per_row_ones() -> None:
    """local_results_many gives each row local_result's candidates and decision score, and
    complete_scores' record scores, with and without a learned score."""
    rows = np.array([PROBS, [0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]], dtype=np.float32)
    names = ("max_prob", "margin", "entropy", "top2", "top3", *(f"label={x}" for x in LABELS))
    learned = LearnedScore(names, tuple(LABELS), tuple(0.1 * i for i in range(len(names))), 0.2)
    cases: list[tuple[TaskPolicy, LearnedScore | None]] = [
        (_task(), None),
        (_task(score="entropy", top_k=2), None),
        (_task(score="learned", learned_score="l.json"), learned),
    ]
    for task, model in cases:
        got, complete = local_results_many(rows, LABELS, task, model)
        for row, res, scores in zip(rows.tolist(), got, complete, strict=True):
            want = local_result(row, LABELS, task, model)
            assert res.candidates == want.candidates
            assert res.scores == pytest.approx(want.scores, abs=1e-12)
            assert scores == pytest.approx(complete_scores(row, want.scores), abs=1e-12)
