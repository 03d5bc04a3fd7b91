"""The edge node's HTTP API (FastAPI), built by `create_app(settings)`.

Every error is JSON `{"error": {"code", "message", "field"}}` with a 4xx status for bad
input; a 500 means a bug. The sync worker runs as a background task of the app.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, ORJSONResponse, Response

from edge_node.api_models import ErrorResponse, InferRequest, InferResponse, ResultResponse
from edge_node.factory import build_service
from edge_node.service import EdgeService
from edge_node.settings import EdgeSettings
from edge_node.sync_worker import SyncWorker
from router.errors import EdgerouteError, RequestTooLarge, RetryableRejection

log = structlog.get_logger("edgeroute.edge")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 413, 422, 429)
}


def error_response(exc: EdgerouteError) -> JSONResponse:
    """The JSON error for an edgeroute error, with Retry-After where it applies."""
    headers = {}
    if isinstance(exc, RetryableRejection):
        headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    return JSONResponse({"error": exc.to_dict()}, status_code=exc.status, headers=headers)


class BodyLimit:
    """ASGI middleware: 413 for bodies over `max_bytes` (by Content-Length or as streamed)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._reject(scope, receive, send)
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._reject(scope, receive, send)

    async def _reject(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        err = RequestTooLarge(f"request body exceeds {self.max_bytes} bytes")
        await error_response(err)(scope, receive, send)


class _TooLarge(Exception):
    pass


def create_app(settings: EdgeSettings, service: EdgeService | None = None) -> FastAPI:
    """Build the edge node app. Validates the policy and loads bundles now (raises
    PolicyError/BundleError); the sync worker starts with the app and stops with it."""
    svc = service or build_service(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        cloud = svc.active.policy.cloud
        worker = SyncWorker(
            svc.queue,
            svc.results,
            svc.client,
            svc.monitor,
            svc.active.policy.sync,
            log=log,
            deadline_s=cloud.request_timeout_ms / 1000 * cloud.retry.max_attempts,
        )
        task = asyncio.create_task(worker.run_forever(stop)) if settings.run_sync_worker else None
        app.state.sync_worker = worker
        log.info(
            "edge_ready", policy_revision=svc.active.revision, models=svc.active.model_versions
        )
        try:
            yield
        finally:
            stop.set()
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, timeout=5)
            await svc.client.aclose()
            svc.decisions.close()
            svc.queue.close()
            svc.results.close()
            svc.budget.close()

    app = FastAPI(
        title="edgeroute edge node",
        version="1",
        lifespan=lifespan,
        default_response_class=ORJSONResponse,
    )
    app.state.service = svc
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    @app.exception_handler(EdgerouteError)
    async def _edgeroute_error(_: Request, exc: EdgerouteError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            {"error": validation_error_detail(exc)}, status_code=400 if _is_json_error(exc) else 422
        )

    @app.post(
        "/v1/infer",
        response_model=InferResponse,
        responses=_ERRORS,
        summary="Answer, queue or escalate one request",
    )
    async def infer(req: InferRequest) -> Response:
        answer = await svc.infer(req)
        return ORJSONResponse(answer.body, status_code=answer.status)

    @app.get("/v1/results/{request_id}", response_model=ResultResponse, responses=_ERRORS)
    async def result(request_id: str) -> dict[str, Any]:
        return svc.result(request_id)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> dict[str, Any]:
        return {
            "status": "ready",
            "models": svc.active.model_versions,
            "connectivity": svc.monitor.state,
        }

    @app.get("/v1/status")
    async def status() -> dict[str, Any]:
        return svc.status()

    @app.get("/metrics")
    async def metrics() -> Response:
        svc.metrics.queue_depth.set(svc.queue.depth)
        return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4")

    return app


def _is_json_error(exc: RequestValidationError) -> bool:
    return any(e.get("type") == "json_invalid" for e in exc.errors())


def validation_error_detail(exc: RequestValidationError) -> dict[str, Any]:
    """Map FastAPI/pydantic's first error to `{"code", "message", "field"}`."""
    errors = exc.errors()
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
