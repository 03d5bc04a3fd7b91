"""Confidence scores: functions of class probabilities -> a float in [0, 1], higher = more
confident. Scorers only return numbers; thresholds are applied in `router.decision`.

`REGISTRY` is the one list of scores: each `Score` has its per-row function (a 1-D
sequence of probabilities summing to ~1) and its batch function (rows [N, C]); the
policy's `score` field, the CLI, the decision log and the learned score all read it.
A new score is one `Score` entry here. Every scorer is pure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Scorer = Callable[[Sequence[float]], float]
BatchScorer = Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]


def max_probability(probs: Sequence[float]) -> float:
    """The probability of the top class."""
    return _clip(max(probs)) if len(probs) else 0.0


def margin(probs: Sequence[float]) -> float:
    """Top-1 probability minus top-2 probability (1.0 for a single class)."""
    if len(probs) < 2:
        return 1.0
    first = second = -math.inf
    for p in probs:
        if p > first:
            first, second = p, first
        elif p > second:
            second = p
    return _clip(first - second)


def entropy_confidence(probs: Sequence[float]) -> float:
    """1 - H(p) / log(n): 1 for a one-hot distribution, 0 for a uniform one."""
    n = len(probs)
    if n < 2:
        return 1.0
    h = 0.0
    for p in probs:
        if p > 0.0:
            h -= p * math.log(p)
    return _clip(1.0 - h / math.log(n))


def _clip(x: float) -> float:
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else float(x)


def all_scores(probs: Sequence[float]) -> dict[str, float]:
    """Every registered score for one probability vector, keyed by scorer name."""
    return {name: fn(probs) for name, fn in SCORERS.items()}


def _clip_many(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.clip(x, 0.0, 1.0)


def max_probability_many(probs: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """`max_probability` of every row of `probs` [N, C] (bit-identical per row)."""
    return _clip_many(probs.max(axis=1))


def margin_many(probs: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """`margin` of every row of `probs` [N, C] (bit-identical per row)."""
    if probs.shape[1] < 2:
        return np.ones(probs.shape[0])
    top2 = -np.partition(-probs, 1, axis=1)[:, :2]
    return _clip_many(top2[:, 0] - top2[:, 1])


def entropy_confidence_many(probs: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """`entropy_confidence` of every row of `probs` [N, C]. numpy sums a row's terms in
    its own order and its `log` may differ from `math.log` in the last bit, so rows agree
    with the scalar scorer to about 1e-15, not bit for bit."""
    n = probs.shape[1]
    if n < 2:
        return np.ones(probs.shape[0])
    positive = probs > 0.0
    terms = np.where(positive, probs * np.log(np.where(positive, probs, 1.0)), 0.0)
    return _clip_many(1.0 + terms.sum(axis=1) / math.log(n))


@dataclass(frozen=True)
class Score:
    """One registered confidence score: `one` scores a probability row, `many` every row
    of a batch (the same numbers; see each batch function for its precision)."""

    name: str
    one: Scorer
    many: BatchScorer
    doc: str


REGISTRY: dict[str, Score] = {
    s.name: s
    for s in (
        Score("max_prob", max_probability, max_probability_many, "top-1 probability"),
        Score("margin", margin, margin_many, "top-1 minus top-2 probability"),
        Score("entropy", entropy_confidence, entropy_confidence_many, "1 - normalised entropy"),
    )
}
SCORE_NAMES: tuple[str, ...] = tuple(REGISTRY)
LEARNED = "learned"
"""The score a task's learned score file gives (router.learned_score), over every
registered score as features."""
SCORERS: dict[str, Scorer] = {name: s.one for name, s in REGISTRY.items()}
BATCH_SCORERS: dict[str, BatchScorer] = {name: s.many for name, s in REGISTRY.items()}


def all_scores_many(probs: npt.NDArray[np.float64]) -> list[dict[str, float]]:
    """`all_scores` of every row of `probs` [N, C], vectorised (see each batch scorer)."""
    columns = {name: fn(probs).tolist() for name, fn in BATCH_SCORERS.items()}
    return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]
