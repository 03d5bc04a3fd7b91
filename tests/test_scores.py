"""Confidence scores are numbers in [0, 1], higher = more confident."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.scores import (
    BATCH_SCORERS,
    SCORERS,
    all_scores,
    all_scores_many,
    entropy_confidence,
    margin,
    max_probability,
)


def _normalise(xs: list[float]) -> list[float]:
    total = sum(xs)
    return [x / total for x in xs]


def test_one_hot_is_fully_confident() -> None:
    """A one-hot distribution scores 1 on every scorer."""
    assert all_scores([0.0, 1.0, 0.0]) == {"max_prob": 1.0, "margin": 1.0, "entropy": 1.0}


def test_uniform_is_least_confident() -> None:
    """A uniform distribution scores 0 margin, 0 entropy-confidence and 1/n max prob."""
    s = all_scores([0.25] * 4)
    assert s["margin"] == 0.0
    assert s["entropy"] == pytest.approx(0.0, abs=1e-12)
    assert s["max_prob"] == 0.25


def test_margin_is_top_two_gap() -> None:
    """Margin is the gap between the two largest probabilities, wherever they sit."""
    assert margin([0.1, 0.6, 0.3]) == pytest.approx(0.3)
    assert margin([0.3, 0.1, 0.6]) == pytest.approx(0.3)


def test_entropy_confidence_matches_formula() -> None:
    """1 - H/log(n) for a known distribution."""
    p = [0.5, 0.5, 0.0, 0.0]
    assert entropy_confidence(p) == pytest.approx(1 - math.log(2) / math.log(4))


@given(st.lists(st.floats(min_value=1e-6, max_value=1.0), min_size=2, max_size=20))
def test_every_score_is_in_unit_interval(raw: list[float]) -> None:
    """Every scorer maps any probability vector into [0, 1]."""
    probs = _normalise(raw)
    for fn in SCORERS.values():
        assert 0.0 <= fn(probs) <= 1.0


@given(st.lists(st.floats(min_value=1e-3, max_value=1.0), min_size=3, max_size=10))
def test_sharpening_never_lowers_max_probability(raw: list[float]) -> None:
    """Moving mass onto the top class never lowers max probability or margin."""
    probs = _normalise(raw)
    top = probs.index(max(probs))
    sharper = [p * 0.5 for p in probs]
    sharper[top] += 0.5
    assert max_probability(sharper) >= max_probability(probs) - 1e-12
    assert margin(sharper) >= margin(probs) - 1e-12


_ROWS = [
    [1.0, 0.0, 0.0],
    [1 / 3, 1 / 3, 1 / 3],
    [0.5, 0.5, 0.0],
    [0.2, 0.7, 0.1],
    [0.0, 0.0, 1.0],
]


@given(
    st.lists(
        st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4).filter(lambda r: sum(r) > 0),
        min_size=1,
        max_size=20,
    )
)
def test_batch_scorers_agree_with_the_scalar_ones(raw: list[list[float]]) -> None:
    """Every batch scorer gives each row the scalar scorer's value: exactly for max_prob and
    margin, within 1e-12 for entropy (numpy's log and summation order)."""
    rows = [_normalise(r) for r in raw] + [[*r, 0.0] for r in _ROWS]
    probs = np.array(rows, dtype=np.float64)
    for name, many in BATCH_SCORERS.items():
        got = many(probs).tolist()
        want = [SCORERS[name](r) for r in rows]
        if name == "entropy":
            assert got == pytest.approx(want, abs=1e-12)
        else:
            assert got == want
    assert all_scores_many(probs)[0].keys() == all_scores(rows[0]).keys()


def test_policy_scores_are_the_registry() -> None:
    """The policy accepts exactly the registered scores plus learned, names them all when
    refusing another, and its JSON schema lists the same names."""
    from pydantic import ValidationError

    from router.policy import TaskPolicy
    from router.scores import LEARNED, REGISTRY

    for name in REGISTRY:
        assert TaskPolicy(edge_bundle="b", threshold=0.5, score=name).score == name
    with pytest.raises(ValidationError) as err:
        TaskPolicy(edge_bundle="b", threshold=0.5, score="marign")
    assert all(repr(n) in str(err.value) for n in [*REGISTRY, LEARNED])
    schema = TaskPolicy.model_json_schema()["properties"]["score"]
    assert schema["enum"] == [*REGISTRY, LEARNED]
