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


class ResultResponse(BaseModel):
    """A queued request's state: pending until the cloud's final answer is stored."""

    request_id: str
    status: Literal["pending", "done", "expired", "failed"]
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
