"""ASGI middleware that refuses request bodies over a size limit (413)."""

from __future__ import annotations

from edge_node.http.asgi import ASGIApp, Message, Receive, Scope, Send
from edge_node.http.errors import error_response
from router.errors import RequestTooLarge


class BodyLimit:
    """ASGI middleware: 413 for bodies over `max_bytes` (by Content-Length or as streamed)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
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
        receive: Receive,
        send: Send,
    ) -> None:
        err = RequestTooLarge(f"request body exceeds {self.max_bytes} bytes")
        await error_response(err)(scope, receive, send)


class _TooLarge(Exception):
    pass
