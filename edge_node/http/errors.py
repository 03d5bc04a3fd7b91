"""The edge API's JSON error answers: `{"error": {"code", "message", "field"}}`."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from router.errors import EdgerouteError, RetryableRejection

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


class OrjsonResponse(JSONResponse):
    """A JSON response serialised with orjson (numpy values and non-str keys allowed)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)


def error_response(exc: EdgerouteError) -> JSONResponse:
    """The JSON error for an edgeroute error, with Retry-After where it applies."""
    headers = {}
    if isinstance(exc, RetryableRejection):
        headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    return JSONResponse({"error": exc.to_dict()}, status_code=exc.status, headers=headers)


def http_error_response(exc: HTTPException) -> JSONResponse:
    """Starlette's routing errors (no such path: 404, method not allowed: 405 with `Allow`)
    in the project's error shape instead of `{"detail": ...}`."""
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    body = {"error": {"code": code, "message": message, "field": None}}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)
