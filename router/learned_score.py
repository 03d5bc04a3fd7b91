"""A learned escalation score: a small logistic model over the confidence features of a
logged request, trained where the right answer is known, predicting whether the edge's
answer is right. `LearnedScore.score` is P(edge right) in [0, 1] (higher = more
confident), so it is thresholded and calibrated like any score in router.scores.

Features (all in the decision log, never inputs): max_prob, margin, entropy confidence,
the top-2 and top-3 edge probabilities, and a one-hot of the edge's top label (labels seen
in training). Pure: numpy + scikit-learn, deterministic for given data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

BASE_FEATURES = ("max_prob", "margin", "entropy")  # fixed: stored files depend on it


@dataclass(frozen=True)
class LearnedScore:
    """A fitted logistic model: `weights` over `feature_names`, plus `bias`."""

    feature_names: tuple[str, ...]
    labels: tuple[str, ...]
    weights: tuple[float, ...]
    bias: float

    def score(self, scores: Mapping[str, float], top: Sequence[tuple[str, float]]) -> float:
        """P(edge answer right) for one request: its scores and edge top-k (label, prob)."""
        x = features(scores, top, self.labels)
        z = float(np.dot(x, np.asarray(self.weights)) + self.bias)
        return float(1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0))))

    def score_many(
        self, rows: Sequence[tuple[Mapping[str, float], Sequence[tuple[str, float]]]]
    ) -> np.ndarray:
        """`score` for many requests at once."""
        return np.array([self.score(s, t) for s, t in rows])


def features(
    scores: Mapping[str, float], top: Sequence[tuple[str, float]], labels: Sequence[str]
) -> np.ndarray:
    """The feature vector of one request (see the module docstring)."""
    probs = [p for _, p in top] + [0.0, 0.0, 0.0]
    onehot = [1.0 if top and top[0][0] == lab else 0.0 for lab in labels]
    base = [float(scores.get(name, 0.0)) for name in BASE_FEATURES]
    return np.array([*base, probs[1], probs[2], *onehot], dtype=float)


def fit_learned_score(
    rows: Sequence[tuple[Mapping[str, float], Sequence[tuple[str, float]]]],
    edge_right: Sequence[bool],
    *,
    c: float = 1.0,
) -> LearnedScore:
    """Fit the model on `rows` (scores, edge top-k) labelled with whether the edge was
    right. Raises ValueError with fewer than 2 examples of each outcome."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(edge_right, dtype=bool)
    if y.sum() < 2 or (~y).sum() < 2:
        raise ValueError("need at least 2 right and 2 wrong edge answers to learn a score")
    labels = tuple(sorted({t[0][0] for _, t in rows if t}))
    x = np.stack([features(s, t, labels) for s, t in rows])
    model = LogisticRegression(C=c, max_iter=1000, class_weight="balanced")
    model.fit(x, y)
    names = (*BASE_FEATURES, "top2", "top3", *(f"label={lab}" for lab in labels))
    return LearnedScore(
        feature_names=names,
        labels=labels,
        weights=tuple(float(w) for w in model.coef_[0]),
        bias=float(model.intercept_[0]),
    )


def to_json(model: LearnedScore) -> str:
    """The model as the JSON text `from_json` reads (a learned_score file)."""
    import json

    return json.dumps(
        {
            "kind": "edgeroute-learned-score",
            "version": 1,
            "feature_names": list(model.feature_names),
            "labels": list(model.labels),
            "weights": list(model.weights),
            "bias": model.bias,
        },
        indent=2,
    )


def from_json(text: str) -> LearnedScore:
    """Parse a learned_score file. Raises ValueError saying what is wrong."""
    import json

    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("kind") != "edgeroute-learned-score":
        raise ValueError("not an edgeroute learned score (kind edgeroute-learned-score)")
    try:
        labels = tuple(str(x) for x in data["labels"])
        names = tuple(str(x) for x in data["feature_names"])
        weights = tuple(float(x) for x in data["weights"])
        bias = float(data["bias"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"missing or bad field: {exc}") from None
    if len(weights) != len(names) or len(names) != len(BASE_FEATURES) + 2 + len(labels):
        raise ValueError("weights, feature_names and labels do not match")
    return LearnedScore(names, labels, weights, bias)
