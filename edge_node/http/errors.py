"""The edge API's JSON error answers: `{"error": {"code", "message", "field"}}`."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from router.errors import EdgerouteError, RetryableRejection


def error_response(exc: EdgerouteError) -> JSONResponse:
    """The JSON error for an edgeroute error, with Retry-After where it applies."""
    headers = {}
    if isinstance(exc, RetryableRejection):
        headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    return JSONResponse({"error": exc.to_dict()}, status_code=exc.status, headers=headers)
