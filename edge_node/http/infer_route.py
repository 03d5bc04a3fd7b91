"""`POST /v1/infer` as a plain ASGI handler in front of FastAPI's router.

The hot path of the product backends: measured at one connection, FastAPI's per-route
machinery (request object, dependency solving, response class) cost more than routing and
inference together. `InferEndpoint` answers `POST /v1/infer` itself and hands every other
request to the app unchanged; the FastAPI route of the same path stays for the OpenAPI
schema (it is never reached for POST). Behaviour is the route's: the same parsing,
validation, JSON errors (`{"error": {...}}`, Retry-After where it applies) and bodies.
It runs inside BodyLimit and BearerAuth, so size limits and auth apply as before.
The parsing and validation of the body (`answer_infer` and the functions below it) live
here, used by both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson
import structlog
from pydantic import ValidationError

from edge_node.answers import Answer
from edge_node.http.asgi import ASGIApp, Receive, Scope, Send
from edge_node.http.errors import error_response
from edge_node.service import EdgeService
from router.edge_api import MAX_BATCH_ITEMS, InferRequest
from router.errors import EdgerouteError, InputError, MalformedRequest

PATH = "/v1/infer"
_JSON = [(b"content-type", b"application/json")]
log = structlog.get_logger("edgeroute.edge")


class InferEndpoint:
    """ASGI middleware answering `POST /v1/infer` (see module doc). Stateless apart from
    the service; safe for concurrent requests on one event loop."""

    def __init__(self, app: ASGIApp, service: EdgeService) -> None:
        self.app = app
        self.service = service
        self._error_response = error_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            answer = await answer_infer(self.service, await _read_body(receive))
        except EdgerouteError as exc:
            await self._error_response(exc)(scope, receive, send)
            return
        except Exception as exc:  # a bug: answer JSON 500, never a bare page or a hang
            log.error("infer_failed", reason=type(exc).__name__)
            await self._error_response(EdgerouteError("internal error"))(scope, receive, send)
            return
        body = orjson.dumps(answer.body)
        headers = [*_JSON, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def answer_infer(service: EdgeService, body: bytes) -> Answer:
    """The answer to one `POST /v1/infer` body (one request or `{"items": [...]}`).
    Raises EdgerouteError (4xx) for a malformed body or a refused single request."""
    data = parse_json_object(body)
    if "items" in data:
        return await service.infer_batch(parse_batch(data, service.batch_limit))
    return await service.infer(validate_request(data))


async def _read_body(receive: Receive) -> bytes:
    """The whole request body (BodyLimit, outside, stops oversized ones)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; raises MalformedRequest (400) otherwise."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedRequest("the body must be a JSON object")
    return data


def validate_request(data: Any, prefix: str = "") -> InferRequest:
    """`data` as an InferRequest; raises InputError (422) naming the first bad field."""
    try:
        return InferRequest.model_validate(data)
    except ValidationError as exc:
        raise _input_error(exc.errors(include_url=False), prefix) from None


def parse_batch(
    data: dict[str, Any], limit_for: Callable[[list[str]], int]
) -> list[InferRequest | EdgerouteError]:
    """A batch envelope's items, each validated on its own (a bad item becomes its error).

    Raises InputError (422, field `items`) for unknown envelope keys, `items` that is not
    a non-empty list, or more items than `limit_for(task names)` allows.
    """
    extra = sorted(set(data) - {"items"})
    if extra:
        raise InputError(
            f"unknown field {extra[0]!r}; a batch body has only 'items'",
            field=extra[0],
            code="unknown_field",
        )
    raw = data["items"]
    if not isinstance(raw, list) or not raw:
        raise InputError("items must be a non-empty list of requests", field="items")
    names = [str(it.get("task")) for it in raw if isinstance(it, dict)]
    limit = min(limit_for(names), MAX_BATCH_ITEMS)
    if len(raw) > limit:
        raise InputError(
            f"the batch has {len(raw)} items; at most {limit} are allowed for its tasks",
            field="items",
            code="batch_too_large",
        )
    out: list[InferRequest | EdgerouteError] = []
    for i, item in enumerate(raw):
        try:
            out.append(validate_request(item, f"items.{i}."))
        except InputError as exc:
            out.append(exc)
    return out


def _input_error(errors: Sequence[Any], prefix: str = "") -> InputError:
    d = error_detail_of(list(errors))
    field = f"{prefix}{d['field']}" if d["field"] else prefix.rstrip(".") or None
    return InputError(d["message"], field=field, code=d["code"])


def error_detail_of(errors: list[Any]) -> dict[str, Any]:
    """Map pydantic's first error to `{"code", "message", "field"}` (the API's error shape)."""
    if not errors:
        return {"code": "invalid_input", "message": "invalid request", "field": None}
    err = errors[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    field = ".".join(loc) or None
    kind = err.get("type", "")
    if kind == "json_invalid":
        return {
            "code": "malformed_json",
            "message": "the body is not valid JSON: "
            f"{err.get('ctx', {}).get('error', err.get('msg'))}",
            "field": None,
        }
    if kind == "extra_forbidden":
        return {
            "code": "unknown_field",
            "message": f"unknown field {field!r}; allowed: " + ", ".join(InferRequest.model_fields),
            "field": field,
        }
    if kind == "missing":
        return {
            "code": "missing_field",
            "message": f"required field {field!r} is missing",
            "field": field,
        }
    return {"code": "invalid_input", "message": f"{field}: {err.get('msg')}", "field": field}
