"""Bearer-token auth of the edge node's `/v1/*` API (`api.auth` in the policy).

When the active policy sets `api.auth.token_env`, every request whose path starts with
`/v1/` must carry `Authorization: Bearer <token>` where `<token>` equals the value of that
environment variable, compared in constant time (`hmac.compare_digest`). Anything else is
answered 401 `{"error": {"code": "unauthorized", ...}}` with `WWW-Authenticate: Bearer`
before the app sees the request. `/healthz`, `/readyz`, `/metrics` and `/docs`,
`/openapi.json` stay open (probes and scrapers carry no token; they hold no inputs).

The policy and the environment are read per request, so a policy reload that turns auth
on or off, or a rotated variable, applies to the next request. An unset or empty variable
fails closed: every `/v1/*` request is refused.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from fastapi.responses import JSONResponse

from router.errors import PolicyError, PolicyIssue, Unauthorized
from router.policy import ApiAuthSettings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
PROTECTED_PREFIX = "/v1/"


def check_token_configured(
    auth: ApiAuthSettings | None, environ: Mapping[str, str] = os.environ
) -> None:
    """Raise PolicyError if `auth` is set but its token variable is unset or empty (the
    node refuses to start rather than serve an API nobody can call). Pure read."""
    if auth is not None and not environ.get(auth.token_env):
        raise PolicyError(
            [
                PolicyIssue(
                    "api.auth.token_env",
                    f"names {auth.token_env}, which is unset or empty in the environment",
                )
            ]
        )


def token_matches(header: str | None, expected: str) -> bool:
    """Whether the Authorization header value is `Bearer <expected>`. Constant time in the
    token's content (hmac.compare_digest); an empty `expected` never matches."""
    if not expected or header is None:
        return False
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode(), expected.encode())


class BearerAuth:
    """ASGI middleware enforcing `api.auth` on `/v1/*` (see module doc). Stateless and
    safe to share between concurrent requests."""

    def __init__(
        self,
        app: ASGIApp,
        auth_of: Callable[[], ApiAuthSettings | None],
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        """`auth_of()` returns the active policy's `api.auth` (read per request)."""
        self.app = app
        self.auth_of = auth_of
        self.environ = environ

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        auth = self.auth_of() if scope["type"] == "http" else None
        if auth is None or not str(scope.get("path", "")).startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        if token_matches(header, self.environ.get(auth.token_env, "")):
            await self.app(scope, receive, send)
            return
        err = Unauthorized(
            "this edge node requires `Authorization: Bearer <token>` on /v1/*"
            if header is None
            else "the bearer token is not valid for this edge node",
            field="Authorization",
        )
        response = JSONResponse(
            {"error": err.to_dict()},
            status_code=err.status,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)
