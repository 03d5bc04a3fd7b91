"""CloudClient against httpx.MockTransport with a fake clock and sleep (no real waiting)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import orjson
import pytest

from edge_node.cloud.client import CloudClient
from router.errors import CloudRejected, CloudTimeout, CloudUnauthorized, CloudUnavailable
from router.policy import CloudSettings
from router.wire import RerankFailure, RerankItem, RerankResult, parse_retry_after
from tests.rerank_fakes import results_body

Handler = Callable[[httpx.Request], httpx.Response]


class FakeTime:
    """A monotonic clock that only moves when the code under test sleeps (or we say so)."""

    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.t

    async def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


def items(n: int = 2) -> list[RerankItem]:
    return [
        RerankItem(task="iris", request_id=f"r{i}", inputs=[1.0, 2.0], candidates=["a"])
        for i in range(n)
    ]


def ok_body(req: httpx.Request) -> dict[str, object]:
    return results_body(orjson.loads(req.content)["items"])


def make(handler: Handler, ft: FakeTime, **cloud: object) -> tuple[CloudClient, list[float]]:
    """A client whose transport records the read timeout of each try."""
    timeouts: list[float] = []

    def record(req: httpx.Request) -> httpx.Response:
        timeouts.append(req.extensions["timeout"]["read"])
        return handler(req)

    base: dict[str, object] = {
        "retry": {
            "max_attempts": 3,
            "backoff_initial_ms": 100,
            "backoff_max_ms": 1000,
            "jitter": False,
        }
    }
    base.update(cloud)
    client = CloudClient(
        CloudSettings.model_validate(base),
        node_id="edge-7",
        token="tok",
        transport=httpx.MockTransport(record),
        clock=ft.clock,
        sleep=ft.sleep,
        rng=lambda: 0.5,
    )
    return client, timeouts


def test_success_sends_batch_and_headers() -> None:
    """One try: {"items": [...]} body, node/request-id/auth headers, results in order."""
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json=ok_body(req))

    ft = FakeTime()
    client, _ = make(handler, ft)
    out = asyncio.run(client.rerank(items(2), deadline_s=1.0, request_id="batch-1"))
    assert [r.request_id for r in out] == ["r0", "r1"]
    assert all(isinstance(r, RerankResult) for r in out)
    req = seen[0]
    assert req.url.path == "/v1/rerank" and req.method == "POST"
    assert req.headers["X-Edgeroute-Node"] == "edge-7"
    assert req.headers["X-Request-ID"] == "batch-1"
    assert req.headers["Authorization"] == "Bearer tok"
    assert len(orjson.loads(req.content)["items"]) == 2
    assert ft.sleeps == []
    assert client.base_url == "http://127.0.0.1:8000"


def test_first_send_header_goes_with_the_first_try_only() -> None:
    """A call whose ids the client's id source made marks its first try
    X-Edgeroute-First-Send: 1 and no retry; ids it did not make, a resend, or an id sent
    before (a client echoing it back) mark no try."""
    marks: list[str | None] = []

    def handler(req: httpx.Request) -> httpx.Response:
        marks.append(req.headers.get("X-Edgeroute-First-Send"))
        if len(marks) in (1, 3):
            return httpx.Response(503)
        return httpx.Response(200, json=ok_body(req))

    client, _ = make(handler, FakeTime())
    minted = [RerankItem(task="iris", request_id=client.ids.new(), inputs=[1.0, 2.0])]
    asyncio.run(client.rerank(minted, deadline_s=10.0))
    asyncio.run(client.rerank(items(1), deadline_s=10.0))
    assert marks == ["1", None, None, None]
    asyncio.run(client.rerank(minted, deadline_s=10.0, resend=True))
    asyncio.run(client.rerank(minted, deadline_s=10.0))  # the same id again: an echo
    assert marks[4:] == [None, None]


def test_retries_5xx_then_succeeds_with_exponential_backoff() -> None:
    """Two 500s then 200: three tries, sleeps 0.1 then 0.2 (no jitter)."""
    calls = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(500) if len(calls) < 3 else httpx.Response(200, json=ok_body(req))

    ft = FakeTime()
    client, _ = make(handler, ft)
    out = asyncio.run(client.rerank(items(1), deadline_s=10.0))
    assert len(out) == 1 and len(calls) == 3
    assert ft.sleeps == pytest.approx([0.1, 0.2])


def test_gives_up_after_max_attempts() -> None:
    """A cloud that always answers 503 is tried exactly max_attempts times."""
    calls = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(503, json={"error": {"code": "overloaded", "message": "busy"}})

    client, _ = make(handler, FakeTime())
    with pytest.raises(CloudUnavailable, match="overloaded"):
        asyncio.run(client.rerank(items(), deadline_s=100.0))
    assert len(calls) == 3


def test_retry_after_is_a_minimum_wait() -> None:
    """A 429 with Retry-After: 0.75 makes the next try wait at least 0.75 s."""
    calls = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(429, headers={"Retry-After": "0.75"})
        return httpx.Response(200, json=ok_body(req))

    ft = FakeTime()
    client, _ = make(handler, ft)
    asyncio.run(client.rerank(items(), deadline_s=10.0))
    assert ft.sleeps == [0.75]


def test_retry_after_beyond_deadline_fails_fast_with_hint() -> None:
    """If Retry-After exceeds the time left, no sleep happens and the hint is kept."""

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": "30"})

    ft = FakeTime()
    client, _ = make(handler, ft)
    with pytest.raises(CloudUnavailable) as err:
        asyncio.run(client.rerank(items(), deadline_s=2.0))
    assert err.value.retry_after_s == 30.0
    assert ft.sleeps == []


def test_deadline_is_never_exceeded() -> None:
    """Slow failing tries: total (fake) time stays within the deadline; per-try timeouts
    are cut to the time left."""
    ft = FakeTime()

    def handler(req: httpx.Request) -> httpx.Response:
        ft.t += 0.4  # each try takes 0.4 s
        return httpx.Response(502)

    client, timeouts = make(
        handler,
        ft,
        request_timeout_ms=5000,
        retry={
            "max_attempts": 10,
            "backoff_initial_ms": 100,
            "backoff_max_ms": 100,
            "jitter": False,
        },
    )
    with pytest.raises(CloudUnavailable):
        asyncio.run(client.rerank(items(), deadline_s=1.0))
    assert ft.t <= 1.0
    assert timeouts[0] == pytest.approx(1.0)
    assert all(t <= 1.0 for t in timeouts) and timeouts[-1] < timeouts[0]
    assert len(timeouts) == 2


def test_4xx_is_rejected_without_retry() -> None:
    """A 422 maps to CloudRejected carrying the cloud's error text, tried once."""
    calls = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(
            422, json={"error": {"code": "invalid_input", "message": "bad", "field": "inputs"}}
        )

    client, _ = make(handler, FakeTime())
    with pytest.raises(CloudRejected, match="invalid_input: bad"):
        asyncio.run(client.rerank(items(), deadline_s=5.0))
    assert len(calls) == 1


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_map_to_unauthorized_without_retry(status: int) -> None:
    """A 401/403 maps to CloudUnauthorized (the node's credentials), tried once."""
    calls = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(status, json={"error": {"code": "unauthorized", "message": "x"}})

    client, _ = make(handler, FakeTime())
    with pytest.raises(CloudUnauthorized):
        asyncio.run(client.rerank(items(), deadline_s=5.0))
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("exc", "mapped"),
    [
        (httpx.ConnectError("refused"), CloudUnavailable),
        (httpx.RemoteProtocolError("bad"), CloudUnavailable),
        (httpx.ReadError("reset"), CloudUnavailable),
        (httpx.ReadTimeout("slow"), CloudTimeout),
        (httpx.ConnectTimeout("slow"), CloudTimeout),
    ],
)
def test_transport_errors_are_mapped_and_retried(exc: Exception, mapped: type[Exception]) -> None:
    """Each httpx failure becomes the documented CloudError after max_attempts tries."""
    calls = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise exc

    client, _ = make(handler, FakeTime())
    with pytest.raises(mapped):
        asyncio.run(client.rerank(items(), deadline_s=5.0))
    assert len(calls) == 3


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"results": []}', b'{"nope": 1}'],
)
def test_malformed_response_is_unavailable(body: bytes) -> None:
    """Unparseable bodies or a wrong result count map to CloudUnavailable."""
    client, _ = make(lambda req: httpx.Response(200, content=body), FakeTime())
    with pytest.raises(CloudUnavailable, match="malformed"):
        asyncio.run(client.rerank(items(), deadline_s=5.0))


def test_per_item_failures_are_returned_not_raised() -> None:
    """A RerankFailure in the results is returned in place, not raised."""

    def handler(req: httpx.Request) -> httpx.Response:
        results = ok_body(req)["results"]
        assert isinstance(results, list)
        results[1] = {
            "request_id": "r1",
            "task": "iris",
            "error": {"code": "unknown_label", "message": "x"},
        }
        return httpx.Response(200, json={"results": results})

    client, _ = make(handler, FakeTime())
    out = asyncio.run(client.rerank(items(2), deadline_s=5.0))
    assert isinstance(out[0], RerankResult) and isinstance(out[1], RerankFailure)


def test_health() -> None:
    """health is True only for a 200 from /healthz and never raises."""

    def up(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200 if req.url.path == "/healthz" else 404)

    def down(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    assert asyncio.run(make(up, FakeTime())[0].health(1.0)) is True
    assert asyncio.run(make(lambda r: httpx.Response(503), FakeTime())[0].health(1.0)) is False
    assert asyncio.run(make(down, FakeTime())[0].health(1.0)) is False


def test_parse_retry_after() -> None:
    """Delta-seconds and HTTP dates parse; garbage and negatives are handled."""
    assert parse_retry_after("3", now_wall=0.0) == 3.0
    assert parse_retry_after("-4", now_wall=0.0) == 0.0
    assert parse_retry_after("soon", now_wall=0.0) is None
    assert parse_retry_after(None, now_wall=0.0) is None
    assert parse_retry_after(
        "Wed, 21 Oct 2015 07:28:10 GMT", now_wall=1445412480.0
    ) == pytest.approx(10.0)
