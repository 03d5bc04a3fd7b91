"""The edge node's client of the cloud re-ranker (`POST {cloud}/v1/rerank`, `GET /healthz`).

httpx's standard transport (a keep-alive connection pool, no transport-level retries,
the policy's TLS and proxy settings: `edge_node.cloud.http_link`), called directly with
prebuilt requests. Exactly one retry
layer (tenacity) that retries only retryable failures, waits exponential backoff with
jitter but never less than the cloud's `Retry-After`, and never sleeps or tries past the
caller's deadline. Every httpx / HTTP / schema failure leaves this module as a
`router.errors.CloudError`:

- connect refused/reset, protocol/read errors, 5xx, 429, 503, malformed 2xx body
  -> `CloudUnavailable(retry_after_s)` (retried)
- httpx timeouts, or no time left for a try -> `CloudTimeout` (retried while time is left)
- 401 / 403 -> `CloudUnauthorized` (the node's credentials; never retried)
- any other 4xx -> `CloudRejected` (never retried)
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
import structlog
from pydantic import ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from edge_node.cloud.http_link import transport as link_transport
from edge_node.cloud.request_ids import RequestIds
from router.errors import (
    CloudError,
    CloudRejected,
    CloudTimeout,
    CloudUnauthorized,
    CloudUnavailable,
)
from router.policy import CloudSettings
from router.wire import (
    FIRST_SEND_HEADER,
    NODE_HEADER,
    REQUEST_ID_HEADER,
    RerankFailure,
    RerankItem,
    RerankResponse,
    RerankResult,
    parse_retry_after,
)

_log = structlog.get_logger("edge_node.cloud.client")
_MIN_TRY_S = 0.001  # do not start a try with less time than this left
_RETRY_STATUSES = frozenset({429, 503})


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, CloudError) and exc.retryable


class CloudClient:
    """Async client of one cloud endpoint. Safe to share between tasks of one event loop;
    call `aclose` when done. `clock` is monotonic seconds, `sleep` awaits seconds, `rng`
    returns a float in [0, 1); all three are injectable for tests."""

    def __init__(
        self,
        settings: CloudSettings,
        *,
        node_id: str,
        token: str | None = None,
        base_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        ids: RequestIds | None = None,
    ) -> None:
        self.settings = settings
        self.ids = ids or RequestIds()
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self._base_url = (base_url or settings.url).rstrip("/")
        self._rerank_url = httpx.URL(f"{self._base_url}/v1/rerank")
        self._health_url = httpx.URL(f"{self._base_url}/healthz")
        self._headers = {
            "Host": self._rerank_url.netloc.decode("ascii"),
            "User-Agent": f"edgeroute/{node_id}",
            NODE_HEADER: node_id,
            "Content-Type": "application/json",
        }
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._transport = transport or link_transport(settings)

    @property
    def base_url(self) -> str:
        """The cloud's base URL this client talks to."""
        return self._base_url

    def _timeout(self, total_s: float) -> dict[str, float]:
        """httpx's per-request timeout extension: `total_s` for each phase, connect capped."""
        connect = min(self.settings.connect_timeout_ms / 1000, total_s)
        return {"connect": connect, "read": total_s, "write": total_s, "pool": total_s}

    async def _send(
        self,
        method: str,
        url: httpx.URL,
        timeout_s: float,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One HTTP exchange, body read and connection released. Raises httpx's errors
        (mapped by the callers)."""
        request = httpx.Request(
            method,
            url,
            headers={**self._headers, **headers} if headers else self._headers,
            content=body,
            extensions={"timeout": self._timeout(timeout_s)},
        )
        resp = await self._transport.handle_async_request(request)
        try:
            await resp.aread()
        finally:
            await resp.aclose()
        return resp

    async def rerank(
        self,
        items: list[RerankItem],
        *,
        deadline_s: float,
        request_id: str | None = None,
        resend: bool = False,
    ) -> list[RerankResult | RerankFailure]:
        """Re-rank `items` on the cloud; results in item order, one per item.

        Returns within about `deadline_s` seconds (per-try timeouts are cut to the time
        left; no backoff sleeps past it). Raises `CloudUnavailable`, `CloudTimeout` or
        `CloudRejected` (see module doc); never an httpx or pydantic error.

        `resend=True` says the items may have been sent before (the sync worker's calls).
        Otherwise, when every item's id was made by `self.ids` and never sent (the node
        made it for this request, so no earlier call carried it), the first try carries
        `X-Edgeroute-First-Send: 1` and the cloud skips its idempotency claim; retries and
        resends never carry it (an earlier try may have reached the cloud).
        """
        if not items:
            return []
        end = self._clock() + deadline_s
        body = orjson.dumps({"items": [i.model_dump(mode="json") for i in items]})
        headers = {REQUEST_ID_HEADER: request_id} if request_id else {}
        first_send = self.ids.take_unsent([i.request_id for i in items]) and not resend
        first_headers = {**headers, FIRST_SEND_HEADER: "1"} if first_send else headers
        expected = [i.request_id for i in items]
        retry = self.settings.retry

        def wait(state: RetryCallState) -> float:
            growth = float(2 ** (state.attempt_number - 1))
            backoff = min(retry.backoff_max_ms, retry.backoff_initial_ms * growth) / 1000
            if retry.jitter:
                backoff *= self._rng()
            exc = state.outcome.exception() if state.outcome else None
            after = exc.retry_after_s if isinstance(exc, CloudError) else None
            return max(backoff, after or 0.0)

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= retry.max_attempts:
                return True
            return self._clock() + state.upcoming_sleep + _MIN_TRY_S >= end

        # The first try runs before tenacity is set up (its machinery is on the path of
        # every escalation; docs/performance.md). A retryable failure of it is replayed as
        # tenacity's attempt 1, so the attempts, waits and stop rules are tenacity's alone.
        try:
            return await self._try_once(body, first_headers, expected, end)
        except CloudError as exc:
            if not exc.retryable:
                raise
            first: CloudError | None = exc
        retrying = AsyncRetrying(
            stop=stop,
            wait=wait,
            sleep=self._sleep,
            retry=retry_if_exception(_is_retryable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if first is not None:
                    failed, first = first, None
                    raise failed
                return await self._try_once(body, headers, expected, end)
        raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover

    async def _try_once(
        self, body: bytes, headers: dict[str, str], expected: list[str], end: float
    ) -> list[RerankResult | RerankFailure]:
        left = end - self._clock()
        if left < _MIN_TRY_S:
            raise CloudTimeout("deadline exhausted before the cloud answered")
        per_try = min(self.settings.request_timeout_ms / 1000, left)
        try:
            async with asyncio.timeout(per_try):
                resp = await self._send("POST", self._rerank_url, per_try, body, headers)
        except (httpx.TimeoutException, TimeoutError) as exc:
            raise CloudTimeout(f"cloud did not answer within {per_try:.3f}s") from exc
        except httpx.HTTPError as exc:
            raise CloudUnavailable(f"cloud unreachable: {_link_failure(exc)}") from exc
        return self._parse(resp, expected)

    def _parse(
        self, resp: httpx.Response, expected: list[str]
    ) -> list[RerankResult | RerankFailure]:
        status = resp.status_code
        if status in _RETRY_STATUSES or status >= 500:
            after = parse_retry_after(resp.headers.get("Retry-After"), now_wall=time.time())
            raise CloudUnavailable(
                f"cloud answered {status}{_error_text(resp)}", retry_after_s=after
            )
        if status in (401, 403):
            raise CloudUnauthorized(f"cloud refused the node's credentials: {status}")
        if status >= 400:
            raise CloudRejected(f"cloud rejected the request: {status}{_error_text(resp)}")
        if status != 200:
            raise CloudUnavailable(f"cloud answered unexpected status {status}")
        try:
            parsed = RerankResponse.model_validate_json(resp.content)
        except ValidationError as exc:
            raise CloudUnavailable(
                f"malformed cloud response ({exc.error_count()} schema errors)"
            ) from exc
        got = [r.request_id for r in parsed.results]
        if got != expected:
            raise CloudUnavailable(
                f"malformed cloud response: {len(got)} results for {len(expected)} items "
                "or results out of order"
            )
        return list(parsed.results)

    async def health(self, timeout_s: float) -> bool:
        """True if `GET /healthz` answers 200 within `timeout_s`; never raises."""
        try:
            async with asyncio.timeout(timeout_s):
                resp = await self._send("GET", self._health_url, timeout_s)
        except (httpx.HTTPError, TimeoutError) as exc:
            _log.debug("cloud_health_failed", reason=type(exc).__name__)
            return False
        return resp.status_code == 200

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._transport.aclose()


def _link_failure(exc: httpx.HTTPError) -> str:
    """The httpx error's name, and the TLS reason when a TLS check failed (an untrusted or
    misnamed certificate, a client certificate the cloud refused)."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"{type(exc).__name__} (TLS: certificate rejected: {cause.verify_message})"
    if isinstance(cause, ssl.SSLError):
        return f"{type(exc).__name__} (TLS: {cause.reason or type(cause).__name__})"
    return type(exc).__name__


def _error_text(resp: httpx.Response) -> str:
    """` code: message (field)` from a wire error body, or '' if there is none."""
    try:
        data: Any = orjson.loads(resp.content)
        err = data["error"]
        text = f" {err['code']}: {err['message']}"
        return text + (f" (field {err['field']})" if err.get("field") else "")
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return ""
