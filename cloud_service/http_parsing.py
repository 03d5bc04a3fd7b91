"""The re-ranker's request parsing and JSON error bodies, free of Ray and Starlette.

Used by the ingress deployment (`cloud_service.deployment`) and by tests; it imports no
other `cloud_service` module, so nothing here can close an import circle.
"""

from __future__ import annotations

import re

import orjson
from pydantic import ValidationError

from router.errors import EdgerouteError, InputError, MalformedRequest, RequestTooLarge
from router.wire import NODE_HEADER, REQUEST_ID_PATTERN, RerankBatch, RerankItem

ANONYMOUS_NODE = "anonymous"
ID_RE = re.compile(REQUEST_ID_PATTERN)


def parse_rerank_body(body: bytes, max_body_bytes: int) -> list[RerankItem]:
    """The items of a `/v1/rerank` body (one item or `{"items": [...]}`), in order.

    Raises RequestTooLarge (413), MalformedRequest (400: not JSON, not an object) or
    InputError (422, `field` = the dotted path of the first schema error).
    """
    if len(body) > max_body_bytes:
        raise RequestTooLarge(f"body exceeds {max_body_bytes} bytes")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedRequest("body is not valid JSON") from None
    if not isinstance(data, dict):
        raise MalformedRequest("body must be a JSON object")
    try:
        if "items" in data:
            return list(RerankBatch.model_validate(data).items)
        return [RerankItem.model_validate(data)]
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        raise InputError(f"{first['msg']}", field=field) from None


def check_content_length(header: str | None, max_body_bytes: int) -> None:
    """Raise RequestTooLarge (413) when a numeric `Content-Length` header exceeds
    `max_body_bytes` (so an oversized body is refused before it is read); anything else
    passes (the body's own length is checked by `parse_rerank_body`)."""
    if header is not None and header.isdigit() and int(header) > max_body_bytes:
        raise RequestTooLarge(f"body exceeds {max_body_bytes} bytes")


def parse_request_ids(body: bytes) -> list[str]:
    """The ids of a `/v1/stats/computed` body `{"request_ids": [...]}`.

    Raises MalformedRequest (400: not JSON) or InputError (422, field `request_ids`: not an
    object holding a list of strings).
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedRequest("body is not valid JSON") from None
    ids = data.get("request_ids") if isinstance(data, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise InputError("request_ids must be a list of strings", field="request_ids")
    return ids


def node_id_of(header: str | None) -> str:
    """The node id from the `X-Edgeroute-Node` header (default "anonymous").

    Raises InputError when the header does not match the request-id pattern.
    """
    if header is None or header == "":
        return ANONYMOUS_NODE
    if not ID_RE.match(header):
        raise InputError("invalid node id", field=NODE_HEADER)
    return header


def request_id_of(header: str | None) -> str | None:
    """The `X-Request-ID` header when it matches the request-id pattern (for log lines),
    else None."""
    return header if header and ID_RE.match(header) else None


def error_body(err: EdgerouteError) -> bytes:
    """The JSON error body for `err`."""
    return orjson.dumps({"error": err.to_dict()})
