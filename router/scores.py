"""Confidence scores: functions of class probabilities -> a float in [0, 1], higher = more
confident. Scorers only return numbers; thresholds are applied in `router.decision`.

Every scorer accepts a 1-D sequence of probabilities (summing to ~1) and is pure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

Scorer = Callable[[Sequence[float]], float]


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


SCORERS: dict[str, Scorer] = {
    "max_prob": max_probability,
    "margin": margin,
    "entropy": entropy_confidence,
}


def all_scores(probs: Sequence[float]) -> dict[str, float]:
    """Every registered score for one probability vector, keyed by scorer name."""
    return {name: fn(probs) for name, fn in SCORERS.items()}
