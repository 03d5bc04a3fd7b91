"""Wire schemas between the edge node and the cloud re-ranker (`POST /v1/rerank`).

Request: one `RerankItem` or `{"items": [RerankItem, ...]}`. Response: always
`{"results": [RerankResult | RerankFailure, ...]}` in the order of the items.
The request_id travels in the item and, for logs, in the `X-Request-ID` header.

`X-Edgeroute-First-Send: 1` is the sender's promise that no item of the call was ever sent
before (the edge node generated their request ids for this call, and this is its first
try): the cloud may then compute them without asking its idempotency store first (see
docs/cloud.md). Absent, or any other value: every item is claimed in the store. A cloud
that does not know the header ignores it, so old and new versions interoperate.
"""

from __future__ import annotations

import email.utils
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
NODE_HEADER = "X-Edgeroute-Node"
REQUEST_ID_HEADER = "X-Request-ID"
FIRST_SEND_HEADER = "X-Edgeroute-First-Send"
Number = Annotated[float, Field(strict=True)]
"""A JSON number (an int is taken as a float); booleans and numeric strings are refused, as
the edge refuses them (`router.inputs`)."""
INPUTS_REQUIRED = "inputs_required"  # RerankFailure code: the model needs the inputs
REQUEST_ID_CONFLICT = "request_id_conflict"  # RerankFailure code: the id named another item


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WireCandidate(_Wire):
    label: str
    score: float


class RerankItem(_Wire):
    """One input to re-rank. `inputs` is the flat feature vector (row-major) of the task's
    input, or None when the edge's policy sends candidates only (`send: candidates_only`;
    a model that needs the inputs answers a RerankFailure with code `inputs_required`);
    `candidates` are the edge's top-k labels (None: score all labels)."""

    task: str = Field(min_length=1, max_length=64)
    request_id: str = Field(pattern=REQUEST_ID_PATTERN)
    inputs: list[Number] | None = Field(default=None, min_length=1, max_length=1_000_000)
    candidates: list[str] | None = Field(default=None, max_length=10_000)


class RerankBatch(_Wire):
    items: list[RerankItem] = Field(min_length=1, max_length=4096)


class RerankResult(_Wire):
    request_id: str
    task: str
    label: str
    score: float
    candidates: list[WireCandidate]  # re-scored, best first
    model_version: str
    scored: Literal["candidates", "all_labels"]
    cached: bool = False


class WireError(_Wire):
    code: str
    message: str
    field: str | None = None


class RerankFailure(_Wire):
    request_id: str
    task: str
    error: WireError


class RerankResponse(_Wire):
    # left_to_right: the two shapes share no valid input (both forbid extra fields, and each
    # requires a field the other forbids), so trying RerankResult first picks what pydantic's
    # default "smart" mode would, at a lower validation cost per result; a malformed
    # result still reports the errors against both shapes.
    results: list[Annotated[RerankResult | RerankFailure, Field(union_mode="left_to_right")]]


def parse_retry_after(value: str | None, *, now_wall: float) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds, or an HTTP-date counted from
    `now_wall`, UNIX seconds); None if absent or unparseable; never negative. Pure."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now_wall)
