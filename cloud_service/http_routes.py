"""The HTTP routing of the ingress: its four fixed paths, and the answers for anything else.

The ingress is a plain Serve HTTP handler (`__call__` taking the Starlette request), not a
FastAPI app: for four fixed routes, FastAPI's router, middleware stack and response
wrapping cost more CPU per request than they are worth. `dispatch` gives unknown paths and
wrong methods the answers FastAPI gave: 404 / 405 with `{"detail": ...}` and `Allow`, 307
to the path without its trailing slash. Free of Ray.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

ROUTES: dict[str, tuple[str, str]] = {
    "/v1/rerank": ("POST", "rerank"),
    "/healthz": ("GET", "healthz"),
    "/v1/stats": ("GET", "stats"),
    "/v1/stats/computed": ("POST", "computed"),
}
"""Path -> (method, name of the handler method taking the request)."""

NOT_FOUND = orjson.dumps({"detail": "Not Found"})
METHOD_NOT_ALLOWED = orjson.dumps({"detail": "Method Not Allowed"})


def json_response(
    payload: bytes, status: int = 200, retry_after_s: float | None = None
) -> Response:
    """A JSON response with the given bytes and status (and `Retry-After`, in whole
    seconds rounded up, when given)."""
    headers = None
    if retry_after_s is not None:
        headers = {"Retry-After": str(max(0, int(-(-retry_after_s // 1))))}
    return Response(
        content=payload, status_code=status, media_type="application/json", headers=headers
    )


def route_path(scope: Mapping[str, Any]) -> str:
    """The request's path relative to the app's route prefix (`root_path`), as Starlette's
    router computes it."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path


async def dispatch(handlers: object, request: Request) -> Response:
    """Route one HTTP call to the method of `handlers` that `ROUTES` names for its path and
    method; 404, 405 or 307 (see the module docstring) otherwise."""
    path = route_path(request.scope)
    route = ROUTES.get(path)
    if route is None:
        if path.endswith("/") and path.rstrip("/") in ROUTES:
            target = request.url.replace(path=request.url.path.rstrip("/"))
            return Response(status_code=307, headers={"location": str(target)})
        return json_response(NOT_FOUND, 404)
    method, name = route
    if request.method != method:
        response = json_response(METHOD_NOT_ALLOWED, 405)
        response.headers["allow"] = method
        return response
    handler: Callable[[Request], Awaitable[Response]] = getattr(handlers, name)
    return await handler(request)
