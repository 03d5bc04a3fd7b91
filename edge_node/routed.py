"""One item on its way through the pipeline: what inference and `decide` made of it, and
what carrying the decision out changed."""

from __future__ import annotations

from dataclasses import dataclass

from edge_node.prepared import PreparedItem
from router.decision import Decision, LocalResult
from router.local_result import complete_scores
from router.wire import RerankResult


@dataclass(slots=True)
class Routed:
    """One item through inference and `decide`: the model version that answered it, the
    local result, every registered score (for the record) and the decision so far; then
    the cloud's answer, if it escalated and the cloud answered."""

    item: PreparedItem
    version: str
    local: LocalResult
    scores: dict[str, float] | None
    decision: Decision
    probs: list[float] | None = None
    cloud: RerankResult | None = None

    def record_scores(self) -> dict[str, float]:
        """Every registered score of the item (completed now if routing left them)."""
        if self.scores is None:
            self.scores = complete_scores(self.probs or [], self.local.scores)
        return self.scores
