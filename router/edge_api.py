"""Schemas of the edge node's HTTP API (`/v1/infer`, `/v1/results/{id}`, errors).

These are the public contract for product backends (and `edgeroute.client`). Requests
are strict: unknown fields are rejected with 422 naming the field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from router.wire import REQUEST_ID_PATTERN


class InferRequest(BaseModel):
    """One inference request."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    task: str = Field(min_length=1, max_length=64, description="Task name from the policy.")
    inputs: list[Any] | dict[str, Any] = Field(
        description="A flat list of numbers (row-major), or {input_name: nested list}."
    )
    request_id: str | None = Field(
        default=None,
        pattern=REQUEST_ID_PATTERN,
        description="Client-chosen id (1-128 of A-Z a-z 0-9 . _ : -); generated if absent.",
    )
    deadline_ms: int | None = Field(
        default=None, ge=1, le=600_000, description="End-to-end deadline; policy default if absent."
    )


MAX_BATCH_ITEMS = 10_000  # hard cap of the schema; each task's policy sets its own limit


class InferBatchRequest(BaseModel):
    """Several requests in one call: `{"items": [InferRequest, ...]}`, answered in order.

    Items may name different tasks. The batch may hold at most the smallest
    `max_batch_items` of the tasks it names (422 on `items` beyond that).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    items: list[InferRequest] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)


class CandidateOut(BaseModel):
    label: str
    score: float


class InferResponse(BaseModel):
    """The answer to one request. `final` is false while a cloud verification is pending."""

    request_id: str
    task: str
    route: Literal["edge", "cloud", "queued"]
    reason: str
    label: str | None
    score: float | None
    candidates: list[CandidateOut]
    model_version: str
    latency_ms: float
    final: bool = True
    status: Literal["answered", "accepted"] = "answered"
    policy_revision: str | None = Field(
        default=None, description="Content hash of the policy revision that decided this."
    )
    budget: str | None = Field(
        default=None,
        description="With reason budget_exhausted: the exhausted budget, e.g. node/day/calls.",
    )


class ResultResponse(BaseModel):
    """A queued request's state: pending until the cloud's final answer is stored;
    `quarantined` when its stored record could not be read (`reason` says why)."""

    request_id: str
    status: Literal["pending", "done", "expired", "failed", "quarantined"]
    task: str | None = None
    label: str | None = None
    score: float | None = None
    candidates: list[CandidateOut] = []
    model_version: str | None = None
    route: str | None = None
    reason: str | None = None
    provisional: dict[str, Any] | None = None
    error: str | None = None


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ItemError(BaseModel):
    """One batch item that was not accepted (the 4xx it would have had on its own)."""

    request_id: str | None = None
    status: Literal["error"] = "error"
    http_status: int = Field(description="The status the item would have had on its own.")
    error: ErrorDetail
    retry_after_s: float | None = Field(
        default=None, description="For http_status 429: seconds to wait before resending."
    )


class InferBatchResponse(BaseModel):
    """One entry per batch item, in the items' order: an answer or that item's error."""

    results: list[InferResponse | ItemError]
