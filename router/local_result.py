"""From one probability vector to the `LocalResult` that `decide` needs (pure).

Only the scores a decision reads are computed here: the task's own score, or every
registered score when the task uses a learned score (whose features are all of them).
The decision log fills in the rest later, off the request path (`complete_scores`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from router.candidates import top_k, top_k_many
from router.decision import LocalResult
from router.learned_score import LearnedScore
from router.policy import TaskPolicy
from router.scores import SCORERS, all_scores, all_scores_many


def local_result(
    probs: Sequence[float],
    labels: Sequence[str],
    task: TaskPolicy,
    learned: LearnedScore | None = None,
) -> LocalResult:
    """The edge's top-k (`task.top_k`) and the score(s) `decide` reads for `task`.

    With `learned`, every registered score plus `learned`; otherwise the task's score
    only (a name not registered, e.g. `learned` without a model, is left out and decides
    as 0.0). Pure and thread-safe.
    """
    cands = top_k(probs, labels, task.top_k)
    if learned is not None:
        scores = all_scores(probs)
        scores["learned"] = learned.score(scores, [(c.label, c.score) for c in cands])
        return LocalResult(cands, scores)
    scorer = SCORERS.get(task.score)
    return LocalResult(cands, {} if scorer is None else {task.score: scorer(probs)})


def complete_scores(probs: Sequence[float], scores: dict[str, float]) -> dict[str, float]:
    """Every registered score of `probs`, with the ones already computed (`scores`, e.g.
    a learned score) kept as they are. Pure."""
    out = all_scores(probs)
    out.update(scores)
    return out


def local_results_many(
    probs: npt.NDArray[np.floating],
    labels: Sequence[str],
    task: TaskPolicy,
    learned: LearnedScore | None = None,
) -> tuple[list[LocalResult], list[dict[str, float]]]:
    """`local_result` for every row of `probs` [N, C] at once, plus every registered score
    of each row (for the decision log, as `complete_scores` gives them).

    Vectorised over the batch: the top-k and the max_prob and margin scores equal the
    per-row functions exactly; entropy agrees to about 1e-15 (see
    `router.scores.entropy_confidence_many`). A batch of one (a single request) is scored
    by the per-row functions, which cost less than the vectorised ones for one row.
    Pure and thread-safe.
    """
    if len(probs) == 1:
        row = probs[0].tolist()
        one = local_result(row, labels, task, learned)
        return [one], [complete_scores(row, one.scores)]
    rows = np.asarray(probs, dtype=np.float64)
    cands = top_k_many(rows, labels, task.top_k)
    every = all_scores_many(rows)
    out: list[LocalResult] = []
    if learned is not None:
        for c, scores in zip(cands, every, strict=True):
            scores["learned"] = learned.score(scores, [(x.label, x.score) for x in c])
            out.append(LocalResult(c, dict(scores)))
        return out, every
    name = task.score
    for c, scores in zip(cands, every, strict=True):
        out.append(LocalResult(c, {name: scores[name]} if name in scores else {}))
    return out, every
