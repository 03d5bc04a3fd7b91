"""Client library for product backends calling an edge node: `Client` and `AsyncClient`.

Both speak the edge node's HTTP API (`POST /v1/infer`, `GET /v1/results/{id}`) over httpx
and return typed results (the pydantic models of `router.edge_api`). They:

- apply a timeout to every call (`timeout_s`);
- honour `Retry-After` on 429 and 503: up to `max_retries` more tries, sleeping
  `max(Retry-After, backoff)` capped at `max_retry_wait_s` (the sleep is injectable);
- raise only `EdgerouteError` subclasses: the server's 4xx error as the matching
  `router.errors` class (`InputError`, `UnknownTask`, `NotFound`, `QueueFull`,
  `BudgetRejected`, `MalformedRequest`, `RequestTooLarge`; `field` and `code` kept),
  `EdgeUnavailable` when the node cannot be reached or answers 5xx, `EdgeTimeout` when a
  call or `wait_for_result` runs out of time.

Typical use::

    with Client("http://127.0.0.1:8080") as edge:
        ans = edge.infer("digits", pixels)              # InferResponse
        if ans.status == "accepted" or not ans.final:   # queued: fetch the final answer later
            final = edge.wait_for_result(ans.request_id, timeout_s=30)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from pydantic import TypeAdapter
from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_result, stop_after_attempt

from router.edge_api import InferResponse, ItemError, ResultResponse
from router.errors import (
    BudgetRejected,
    EdgerouteError,
    InputError,
    MalformedRequest,
    NotFound,
    QueueFull,
    RequestTooLarge,
    RetryableRejection,
    Unauthorized,
    UnknownTask,
)
from router.wire import parse_retry_after

__all__ = [
    "AsyncClient",
    "Client",
    "EdgeTimeout",
    "EdgeUnavailable",
    "InferResponse",
    "ItemError",
    "ResultResponse",
    "RetryPolicy",
]

Inputs = Sequence[float] | Mapping[str, Any]
_RETRY_STATUSES = (429, 503)
_BATCH_ENTRY: TypeAdapter[InferResponse | ItemError] = TypeAdapter(InferResponse | ItemError)


class EdgeUnavailable(EdgerouteError):
    """The edge node could not be reached, or answered 5xx (after the allowed retries)."""

    status = 503
    code = "edge_unavailable"


class EdgeTimeout(EdgerouteError):
    """A call, or `wait_for_result`, did not finish within its timeout."""

    status = 504
    code = "edge_timeout"


@dataclass(frozen=True)
class RetryPolicy:
    """How 429/503 answers are retried: `max_retries` more tries after the first, each
    after `max(Retry-After, backoff)` seconds, never more than `max_wait_s`; backoff starts at
    `backoff_initial_s` and doubles per try."""

    max_retries: int = 3
    backoff_initial_s: float = 0.1
    max_wait_s: float = 10.0

    def wait_s(self, attempt: int, retry_after_s: float | None) -> float:
        """Seconds to sleep before try `attempt + 1` (attempt counts from 0)."""
        backoff = self.backoff_initial_s * float(2**attempt)
        return min(self.max_wait_s, max(backoff, retry_after_s or 0.0))

    def tenacity_args(self) -> dict[str, Any]:
        """The strategy as tenacity arguments: retry 429/503 answers up to `max_retries`
        times, waiting `wait_s` (Retry-After honoured); when tries run out the last
        response is returned, not raised. Exceptions are never retried."""

        def wait(state: RetryCallState) -> float:
            resp = state.outcome.result() if state.outcome is not None else None
            after = (
                parse_retry_after(resp.headers.get("retry-after"), now_wall=time.time())
                if resp
                else None
            )
            return self.wait_s(state.attempt_number - 1, after)

        return {
            "retry": retry_if_result(lambda r: r.status_code in _RETRY_STATUSES),
            "stop": stop_after_attempt(self.max_retries + 1),
            "wait": wait,
            "retry_error_callback": lambda state: state.outcome.result(),
        }


_BY_CODE: dict[str, type[InputError]] = {
    "unknown_task": UnknownTask,
    "malformed_json": MalformedRequest,
    "body_too_large": RequestTooLarge,
}


def error_from_response(resp: httpx.Response) -> EdgerouteError:
    """The `router.errors` exception for an error response of the edge node."""
    try:
        detail = orjson.loads(resp.content).get("error") or {}
    except (orjson.JSONDecodeError, AttributeError):
        detail = {}
    code = str(detail.get("code") or f"http_{resp.status_code}")
    message = str(detail.get("message") or resp.text[:200] or resp.reason_phrase)
    field = detail.get("field")
    status = resp.status_code
    if status == 429:
        after = parse_retry_after(resp.headers.get("retry-after"), now_wall=time.time()) or 1.0
        cls: type[RetryableRejection] = BudgetRejected if code == "budget_exhausted" else QueueFull
        return cls(message, retry_after_s=after, field=field, code=code)
    if status == 404:
        return NotFound(message, field=field, code=code)
    if status == 401:
        return Unauthorized(message, field=field, code=code)
    if 400 <= status < 500:
        err = _BY_CODE.get(code, InputError)(message, field=field, code=code)
        err.status = status
        return err
    return EdgeUnavailable(f"edge node answered {status}: {message}", code=code)


def _auth(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def _infer_body(
    task: str, inputs: Inputs, request_id: str | None, deadline_ms: int | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": task,
        "inputs": inputs if isinstance(inputs, Mapping) else list(inputs),
    }
    if request_id is not None:
        body["request_id"] = request_id
    if deadline_ms is not None:
        body["deadline_ms"] = deadline_ms
    return body


def _parse_infer(resp: httpx.Response) -> InferResponse:
    if resp.status_code not in (200, 202):
        raise error_from_response(resp)
    return InferResponse.model_validate_json(resp.content)


def _parse_batch(resp: httpx.Response) -> list[InferResponse | ItemError]:
    if resp.status_code != 200:
        raise error_from_response(resp)
    return [_BATCH_ENTRY.validate_python(e) for e in orjson.loads(resp.content)["results"]]


def _parse_result(resp: httpx.Response) -> ResultResponse:
    if resp.status_code != 200:
        raise error_from_response(resp)
    return ResultResponse.model_validate_json(resp.content)


def _transport_error(exc: httpx.HTTPError, url: str) -> EdgerouteError:
    if isinstance(exc, httpx.TimeoutException):
        return EdgeTimeout(f"{url}: no answer in time ({type(exc).__name__})")
    return EdgeUnavailable(f"{url}: {type(exc).__name__}: {exc}")


class Client:
    """Blocking client of one edge node. Thread-safe (httpx.Client is); close it (or use it
    as a context manager) to release its connections."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 5.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.BaseTransport | None = None,
        token: str | None = None,
    ) -> None:
        """`timeout_s` bounds each HTTP call; `sleep`/`clock`/`transport` are injectable;
        `token` is sent as `Authorization: Bearer <token>` (the node's `api.auth`)."""
        self._http = httpx.Client(
            base_url=base_url, timeout=timeout_s, transport=transport, headers=_auth(token)
        )
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._clock = clock

    def infer(
        self,
        task: str,
        inputs: Inputs,
        *,
        request_id: str | None = None,
        deadline_ms: int | None = None,
    ) -> InferResponse:
        """Send one request; returns its answer (`status` "answered", or "accepted" for a
        queue-only task: fetch it with `wait_for_result`). Raises as the module doc says."""
        body = _infer_body(task, inputs, request_id, deadline_ms)
        return _parse_infer(self._send("POST", "/v1/infer", body))

    def infer_many(self, items: Sequence[Mapping[str, Any]]) -> list[InferResponse | ItemError]:
        """Send a batch (each item a request body: task, inputs, request_id?, deadline_ms?) in
        one call; returns one entry per item, in order: its answer or its `ItemError`."""
        return _parse_batch(self._send("POST", "/v1/infer", {"items": [dict(i) for i in items]}))

    def result(self, request_id: str) -> ResultResponse:
        """The state of a queued request. Raises NotFound for an id the node never queued."""
        return _parse_result(self._send("GET", f"/v1/results/{request_id}", None))

    def wait_for_result(
        self, request_id: str, timeout_s: float = 30.0, *, poll_s: float = 0.05
    ) -> ResultResponse:
        """Poll until the queued request is no longer pending (done, expired or failed) and
        return that state. Polls back off from `poll_s` doubling to 1 s. Raises EdgeTimeout
        after `timeout_s`, NotFound for an unknown id."""
        end = self._clock() + timeout_s
        delay = poll_s
        while True:
            res = self.result(request_id)
            if res.status != "pending":
                return res
            left = end - self._clock()
            if left <= 0:
                raise EdgeTimeout(f"request {request_id!r} still pending after {timeout_s}s")
            self._sleep(min(delay, left))
            delay = min(1.0, delay * 2)

    def _send(self, method: str, path: str, body: Any) -> httpx.Response:
        content = orjson.dumps(body) if body is not None else None
        headers = {"content-type": "application/json"} if body is not None else None

        def attempt() -> httpx.Response:
            try:
                return self._http.request(method, path, content=content, headers=headers)
            except httpx.HTTPError as exc:
                raise _transport_error(exc, path) from None

        resp: httpx.Response = Retrying(sleep=self._sleep, **self._retry.tenacity_args())(attempt)
        return resp

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """asyncio client of one edge node (same API as `Client`, awaitable). Use from one
    event loop; close it with `aclose()` or `async with`."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 5.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
        token: str | None = None,
    ) -> None:
        """`timeout_s` bounds each HTTP call; `sleep`/`clock`/`transport` are injectable;
        `token` is sent as `Authorization: Bearer <token>` (the node's `api.auth`)."""
        self._http = httpx.AsyncClient(
            base_url=base_url, timeout=timeout_s, transport=transport, headers=_auth(token)
        )
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._clock = clock

    async def infer(
        self,
        task: str,
        inputs: Inputs,
        *,
        request_id: str | None = None,
        deadline_ms: int | None = None,
    ) -> InferResponse:
        """As `Client.infer`."""
        body = _infer_body(task, inputs, request_id, deadline_ms)
        return _parse_infer(await self._send("POST", "/v1/infer", body))

    async def infer_many(
        self, items: Sequence[Mapping[str, Any]]
    ) -> list[InferResponse | ItemError]:
        """As `Client.infer_many`."""
        body = {"items": [dict(i) for i in items]}
        return _parse_batch(await self._send("POST", "/v1/infer", body))

    async def result(self, request_id: str) -> ResultResponse:
        """As `Client.result`."""
        return _parse_result(await self._send("GET", f"/v1/results/{request_id}", None))

    async def wait_for_result(
        self, request_id: str, timeout_s: float = 30.0, *, poll_s: float = 0.05
    ) -> ResultResponse:
        """As `Client.wait_for_result`."""
        end = self._clock() + timeout_s
        delay = poll_s
        while True:
            res = await self.result(request_id)
            if res.status != "pending":
                return res
            left = end - self._clock()
            if left <= 0:
                raise EdgeTimeout(f"request {request_id!r} still pending after {timeout_s}s")
            await self._sleep(min(delay, left))
            delay = min(1.0, delay * 2)

    async def _send(self, method: str, path: str, body: Any) -> httpx.Response:
        content = orjson.dumps(body) if body is not None else None
        headers = {"content-type": "application/json"} if body is not None else None

        async def attempt() -> httpx.Response:
            try:
                return await self._http.request(method, path, content=content, headers=headers)
            except httpx.HTTPError as exc:
                raise _transport_error(exc, path) from None

        retrying = AsyncRetrying(sleep=self._sleep, **self._retry.tenacity_args())
        resp: httpx.Response = await retrying(attempt)
        return resp

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
