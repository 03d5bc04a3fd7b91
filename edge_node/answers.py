"""What the node answers for one item: the response body, its decision-log record, and
the per-item error entry of a batch. Pure functions of the carried-out decision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edge_node.prepared import PreparedItem
from router.decision import REQUEST_ID_CONFLICT, Decision, LocalResult
from router.errors import BudgetRejected, EdgerouteError, RequestIdConflict, RetryableRejection
from router.wire import RerankResult


@dataclass(frozen=True)
class Answer:
    """What the HTTP layer sends back: a status code and a JSON-able body."""

    status: int
    body: dict[str, Any]


def answer_body(
    it: PreparedItem,
    decision: Decision,
    local: LocalResult,
    version: str,
    cloud: RerankResult | None,
    revision: str,
    latency_ms: float,
) -> tuple[dict[str, Any], str, str | None]:
    """The response body of one answered or accepted item, the model version that gave
    its answer, and its final label (None when the answer comes later)."""
    if cloud is not None:
        label: str | None = cloud.label
        score: float | None = cloud.score
        cands = [{"label": c.label, "score": c.score} for c in cloud.candidates]
        version = cloud.model_version
    elif decision.answer_now:
        label, score = local.label, local.candidates[0].score
        cands = [{"label": c.label, "score": c.score} for c in local.candidates]
    else:
        label, score, cands = None, None, []
    answered = decision.answer_now or cloud is not None
    body: dict[str, Any] = {
        "request_id": it.rid,
        "task": it.task_name,
        "route": decision.route,
        "reason": decision.reason,
        "label": label,
        "score": score,
        "candidates": cands,
        "model_version": version,
        "latency_ms": round(latency_ms, 3),
        "final": decision.final,
        "status": "answered" if answered else "accepted",
        "policy_revision": revision,
    }
    if decision.budget is not None:
        body["budget"] = decision.budget
    return body, version, label


def decision_record(
    ts: float,
    it: PreparedItem,
    revision: str,
    version: str,
    decision: Decision,
    local: LocalResult,
    scores: dict[str, float],
    final_label: str | None,
    cloud: RerankResult | None,
    latency_ms: float,
) -> dict[str, Any]:
    """The decision-log record of one answered request, in DecisionRecord's JSON shape
    (not validated here: tests check it validates as a DecisionRecord, and
    `read_decision_log` validates every line). Never holds inputs."""
    return {
        "ts": ts,
        "request_id": it.rid,
        "task": it.task_name,
        "policy_revision": revision,
        "model_version": version,
        "scores": scores,
        "edge_candidates": [{"label": c.label, "score": c.score} for c in local.candidates],
        "route": decision.route,
        "reason": decision.reason,
        "final_label": final_label,
        "cloud_label": cloud.label if cloud is not None else None,
        "cloud_candidates": (
            [{"label": c.label, "score": c.score} for c in cloud.candidates]
            if cloud is not None
            else None
        ),
        "budget": decision.budget,
        "kind": "decision",
        "latency_ms": latency_ms,
        "true_label": None,
    }


def item_error(exc: EdgerouteError, request_id: str | None) -> dict[str, Any]:
    """The batch entry for an item refused with `exc` (see router.edge_api.ItemError)."""
    out: dict[str, Any] = {
        "request_id": request_id,
        "status": "error",
        "http_status": exc.status,
        "error": exc.to_dict(),
    }
    if isinstance(exc, RetryableRejection):
        out["retry_after_s"] = exc.retry_after_s
    return out


def rejection(decision: Decision) -> EdgerouteError:
    """The error of a request its (carried-out) decision rejects without an error of its
    own: a request_id the cloud holds for another request, else an exhausted budget."""
    if decision.reason == REQUEST_ID_CONFLICT:
        return RequestIdConflict(
            "this request_id was already used for a different request; use a new "
            "request_id for new inputs",
            field="request_id",
        )
    return budget_rejected()


def budget_rejected() -> BudgetRejected:
    """The error of a request the policy rejects because the budget is exhausted."""
    return BudgetRejected(
        "the cost budget for cloud calls is exhausted and the policy "
        "rejects requests that need the cloud",
        retry_after_s=60.0,
    )


_RESULT_FIELDS = ("label", "score", "candidates", "model_version", "route", "reason")


def flatten_result(rec: dict[str, Any]) -> dict[str, Any]:
    """A result-store record in the shape of the API's ResultResponse."""
    out = {
        k: rec.get(k)
        for k in ("request_id", "status", "task", "provisional", "reason", "error")
        if rec.get(k) is not None
    }
    final = rec.get("result")
    if isinstance(final, dict):
        out.update({k: final[k] for k in _RESULT_FIELDS if k in final})
    return out
