"""The edge node's HTTP API (FastAPI), built by `create_app(settings)`.

Every error is JSON `{"error": {"code", "message", "field"}}` with a 4xx status for bad
input; a 500 means a bug. The node (`edge_node.node.Node`) is started and stopped by the
app's lifespan; the routes read the node's service and status.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from edge_node.http.auth import PROTECTED_PREFIX, BearerAuth, check_token_configured
from edge_node.http.body_limit import BodyLimit
from edge_node.http.docs_page import render as render_docs
from edge_node.http.errors import OrjsonResponse, error_response, http_error_response
from edge_node.http.infer_route import InferEndpoint, answer_infer, error_detail_of
from edge_node.node import Node
from edge_node.settings import EdgeSettings
from router.edge_api import (
    ErrorResponse,
    InferBatchRequest,
    InferBatchResponse,
    InferRequest,
    InferResponse,
    ResultResponse,
)
from router.errors import EdgerouteError

log = structlog.get_logger("edgeroute.edge")
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 413, 422, 429)
}


def create_app(settings: EdgeSettings, node: Node | None = None) -> FastAPI:
    """Build the edge node app around `node` (default: `Node(settings)`, which validates
    the policy and loads bundles now: raises PolicyError/BundleError). The node's
    background work starts with the app and stops with it."""
    node = node or Node(settings)
    svc = node.service

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await node.start()
        try:
            yield
        finally:
            await node.stop()

    app = FastAPI(
        title="edgeroute edge node",
        version="1",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
        docs_url=None,  # Swagger UI and ReDoc load their code from a CDN; /docs is ours
        redoc_url=None,
    )
    app.state.node = node
    app.state.service = svc
    app.state.reloader = node.reloader
    app.state.model_updater = node.updater
    app.state.sync_worker = node.sync
    app.add_middleware(InferEndpoint, service=svc)  # innermost: POST /v1/infer's hot path
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    check_token_configured(svc.active.policy.api.auth)
    app.add_middleware(BearerAuth, auth_of=lambda: svc.active.policy.api.auth)  # outermost

    @app.exception_handler(EdgerouteError)
    async def _edgeroute_error(_: Request, exc: EdgerouteError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return http_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            {"error": validation_error_detail(exc)}, status_code=400 if _is_json_error(exc) else 422
        )

    @app.post(
        "/v1/infer",
        response_model=InferResponse | InferBatchResponse,
        responses={**_ERRORS, 202: {"model": InferResponse}},
        summary="Answer, queue or escalate one request, or a batch of them",
        description=INFER_DESCRIPTION,
        openapi_extra={"requestBody": _infer_body_schema()},
    )
    async def infer(request: Request) -> Response:
        # Served by `InferEndpoint` (edge_node.http.infer_route) in front of the router; this
        # route documents the endpoint in the OpenAPI schema (body given by `openapi_extra`)
        # and answers the same way if reached.
        answer = await answer_infer(svc, await request.body())
        return OrjsonResponse(answer.body, status_code=answer.status)

    @app.get("/v1/results/{request_id}", response_model=ResultResponse, responses=_ERRORS)
    async def result(request_id: str) -> dict[str, Any]:
        return svc.result(request_id)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(render_docs(app.openapi()))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> dict[str, Any]:
        return {
            "status": "ready",
            "models": svc.active.model_versions,
            "connectivity": node.monitor.state,
        }

    @app.get("/v1/status")
    async def status() -> dict[str, Any]:
        return node.status()

    @app.post("/v1/policy/reload", summary="Reload the policy file now (validated, atomic)")
    async def policy_reload() -> Response:
        outcome = await node.reloader.reload("http")
        return OrjsonResponse(outcome.to_dict(), status_code=422 if outcome.error else 200)

    @app.get("/metrics")
    async def metrics() -> Response:
        # On the loop, like every other reader of the service's state (the monitor is not
        # thread-safe); a scrape reads the budget store once (one small SQLite read).
        return Response(node.metrics.render(), media_type="text/plain; version=0.0.4")

    app.openapi = lambda: _openapi_with_body_models(app)  # type: ignore[method-assign]
    return app


INFER_DESCRIPTION = """\
One request `{"task", "inputs", ...}` is answered with an `InferResponse` (200, or 202 for an
accepted queue-only request) or an error. A batch `{"items": [request, ...]}` holds at most
the smallest `max_batch_items` of the tasks it names; it is answered 200 with
`{"results": [...]}` in item order, each entry the item's own response or, for an item that
alone would get a 4xx (invalid, unknown task, queue full, budget rejected, duplicate
request_id), an `ItemError` with that status in `http_status`. Only faults of the batch
itself (bad JSON, `items` not a non-empty list, too many items) fail the whole request."""

_BODY_MODELS: tuple[type[BaseModel], ...] = (InferRequest, InferBatchRequest)
BEARER_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "Required on /v1/* when the active policy sets api.auth "
    "(the token is the value of the environment variable api.auth.token_env names).",
}


def _infer_body_schema() -> dict[str, Any]:
    refs = [{"$ref": f"#/components/schemas/{m.__name__}"} for m in _BODY_MODELS]
    return {"required": True, "content": {"application/json": {"schema": {"anyOf": refs}}}}


def _openapi_with_body_models(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the request body models `openapi_extra` refers to."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, routes=app.routes, description=app.description
        )
        components = schema.setdefault("components", {})
        components["securitySchemes"] = {"bearerAuth": BEARER_SCHEME}
        for path, item in schema.get("paths", {}).items():
            if path.startswith(PROTECTED_PREFIX):
                for op in item.values():
                    op["security"] = [{"bearerAuth": []}]
        defs = components.setdefault("schemas", {})
        for model in _BODY_MODELS:
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            defs.update(js.pop("$defs", {}))
            defs[model.__name__] = js
        app.openapi_schema = schema
    return app.openapi_schema


def _is_json_error(exc: RequestValidationError) -> bool:
    return any(e.get("type") == "json_invalid" for e in exc.errors())


def validation_error_detail(exc: RequestValidationError) -> dict[str, Any]:
    """Map FastAPI/pydantic's first error to `{"code", "message", "field"}`."""
    return error_detail_of(list(exc.errors()))
