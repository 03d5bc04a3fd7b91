"""`POST /v1/infer` as a plain ASGI handler in front of FastAPI's router.

The hot path of the product backends: measured at one connection, FastAPI's per-route
machinery (request object, dependency solving, response class) cost more than routing and
inference together. `InferEndpoint` answers `POST /v1/infer` itself and hands every other
request to the app unchanged; the FastAPI route of the same path stays for the OpenAPI
schema (it is never reached for POST). Behaviour is the route's: the same parsing,
validation, JSON errors (`{"error": {...}}`, Retry-After where it applies) and bodies.
It runs inside BodyLimit and BearerAuth, so size limits and auth apply as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
import structlog

from edge_node.service import EdgeService
from router.errors import EdgerouteError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
PATH = "/v1/infer"
_JSON = [(b"content-type", b"application/json")]
log = structlog.get_logger("edgeroute.edge")


class InferEndpoint:
    """ASGI middleware answering `POST /v1/infer` (see module doc). Stateless apart from
    the service; safe for concurrent requests on one event loop."""

    def __init__(self, app: ASGIApp, service: EdgeService) -> None:
        # http_app imports this module; its helpers are bound here, once, at app build.
        from edge_node import http_app

        self.app = app
        self.service = service
        self._error_response = http_app.error_response
        self._parse_object = http_app.parse_json_object
        self._parse_batch = http_app.parse_batch
        self._validate = http_app.validate_request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            data = self._parse_object(await _read_body(receive))
            svc = self.service
            if "items" in data:
                answer = await svc.infer_batch(self._parse_batch(data, svc.batch_limit))
            else:
                answer = await svc.infer(self._validate(data))
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
