"""What a fake cloud re-ranker answers in tests: a valid `RerankResponse` body for the
items a `/v1/rerank` call sent, every item scored the same."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def results_body(
    items: Iterable[dict[str, Any]],
    *,
    label: str = "a",
    model_version: str = "c1",
    scored: str = "candidates",
) -> dict[str, Any]:
    """`{"results": [...]}` answering each sent item (its request_id and task) with `label`
    at score 0.9."""
    return {
        "results": [
            {
                "request_id": it["request_id"],
                "task": it["task"],
                "label": label,
                "score": 0.9,
                "candidates": [{"label": label, "score": 0.9}],
                "model_version": model_version,
                "scored": scored,
            }
            for it in items
        ]
    }
