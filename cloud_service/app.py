"""The Ray Serve application of the cloud re-ranker: `build_app(settings)`.

One FastAPI-ingress deployment serves every task found under `settings.bundles_dir`:

- `POST /v1/rerank`: a `RerankItem` or a `RerankBatch`; answers a `RerankResponse` in item
  order. Items already answered for the node (header `X-Edgeroute-Node`) come from the shared
  result store with `cached: true`; misses of single-item requests go through a
  `@serve.batch` method, so concurrent requests share one ONNX run; the misses of a batch
  request are computed in one model call per task.
- `GET /healthz`: `{"status": "ok", "tasks": {task: version}}` (no auth).
- `GET /v1/stats`: the store's counters plus this replica's batch counters.

Errors are JSON `{"error": {"code", "message", "field"}}`: 400 bad JSON, 413 body too large,
422 schema error, 401 bad token. Nothing here runs at import: ray is imported by `build_app`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, cast

import orjson
from pydantic import ValidationError

from cloud_service.settings import CloudServiceSettings
from router.errors import (
    EdgerouteError,
    InputError,
    MalformedRequest,
    RequestTooLarge,
)
from router.wire import (
    NODE_HEADER,
    REQUEST_ID_PATTERN,
    RerankBatch,
    RerankItem,
)

if TYPE_CHECKING:
    from ray.serve import Application
    from ray.serve.deployment import Deployment

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


def node_id_of(header: str | None) -> str:
    """The node id from the `X-Edgeroute-Node` header (default "anonymous").

    Raises InputError when the header does not match the request-id pattern.
    """
    if header is None or header == "":
        return ANONYMOUS_NODE
    if not ID_RE.match(header):
        raise InputError("invalid node id", field=NODE_HEADER)
    return header


def error_body(err: EdgerouteError) -> bytes:
    """The JSON error body for `err`."""
    return orjson.dumps({"error": err.to_dict()})


def build_app(settings: CloudServiceSettings) -> Application:
    """The bound Serve application for `settings` (deploy it with `serve.run`).

    Replica count, `max_ongoing_requests` and `max_queued_requests` come from `settings`.
    Building has no side effects; the models are loaded in each replica's constructor
    (a bad bundle fails the deployment with the BundleError message).
    """
    from cloud_service.deployment import CloudReranker

    deployment = cast("Deployment", CloudReranker)
    return deployment.options(
        num_replicas=settings.num_replicas,
        max_ongoing_requests=settings.max_ongoing_requests,
        max_queued_requests=settings.max_queued_requests,
    ).bind(settings)
