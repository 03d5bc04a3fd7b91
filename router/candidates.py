"""Turning a probability vector into ranked candidates (pure)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from router.decision import Candidate


def top_k(probs: Sequence[float], labels: Sequence[str], k: int) -> tuple[Candidate, ...]:
    """The `k` most probable labels, best first; ties keep label order."""
    # reverse=True keeps the sort stable: equal probabilities stay in label order
    order = sorted(range(len(probs)), key=probs.__getitem__, reverse=True)[: max(1, k)]
    return tuple([Candidate(labels[i], float(probs[i])) for i in order])


def top_k_many(
    probs: npt.NDArray[np.float64], labels: Sequence[str], k: int
) -> list[tuple[Candidate, ...]]:
    """`top_k` of every row of `probs` [N, C], with the same order and ties (a stable sort
    of the negated probabilities keeps equal ones in label order)."""
    k = max(1, k)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    picked = np.take_along_axis(probs, order, axis=1).tolist()
    return [
        tuple([Candidate(labels[i], p) for i, p in zip(idx, ps)])  # noqa: B905 same lengths
        for idx, ps in zip(order.tolist(), picked)  # noqa: B905 same lengths
    ]


def restrict_and_rank(
    probs: Sequence[float], labels: Sequence[str], allowed: Sequence[str] | None
) -> tuple[Candidate, ...]:
    """Re-rank: scores of `allowed` labels (all labels if None), renormalised, best first.

    Unknown labels in `allowed` raise KeyError naming the label.
    """
    index = {label: i for i, label in enumerate(labels)}
    chosen = list(labels) if allowed is None else list(dict.fromkeys(allowed))
    for label in chosen:
        if label not in index:
            raise KeyError(label)
    raw = [float(probs[index[label]]) for label in chosen]
    total = sum(raw)
    scores = [r / total for r in raw] if total > 0 else [1.0 / len(raw)] * len(raw)
    ranked = sorted(zip(chosen, scores, strict=True), key=lambda t: -t[1])
    return tuple(Candidate(label, s) for label, s in ranked)
