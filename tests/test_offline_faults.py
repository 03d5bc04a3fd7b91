"""Fault injection between a real edge node and its cloud: added latency, resets and hangs
through the TCP fault proxy (in front of the session's Ray Serve re-ranker), and 5xx / 429 +
Retry-After from a tiny fake upstream. Every request ends within its deadline, the breaker
opens after the configured failures and closes once the upstream recovers, and retries stay
within the policy."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from edgeroute.netproxy import ThreadedFaultProxy
from tests.edge_fixtures import EdgeNode, policy_head
from tests.offline_support import wait_until
from tests.rerank_fakes import results_body

DEADLINE_MS = 300
SLACK_MS = 150  # HTTP + scheduling on a loaded 2-core machine
MAX_ATTEMPTS = 3
FAILURES_TO_OPEN = 3
OPEN_MS = 400
PROBE_MS = 100


def _policy(edge_bundle: Path) -> str:
    """Task `live`: cloud_first (every request escalates), answered locally when the cloud
    fails or is known down, never queued (so the sync worker makes no cloud calls)."""
    head = policy_head(
        connect_timeout_ms=100,
        retry=f"{{max_attempts: {MAX_ATTEMPTS}, backoff_initial_ms: 10, backoff_max_ms: 40}}",
        breaker=(
            f"{{failure_threshold: {FAILURES_TO_OPEN}, open_ms: {OPEN_MS}, open_max_ms: 1500, "
            f"probe_interval_ms: {PROBE_MS}, failure_ratio: null}}"
        ),
        queue="max_items: 1000\n  max_bytes: 67108864\n  on_full: reject",
        cost="price_per_call: 0.0",
    )
    return f"""\
{head}tasks:
  live:
    edge_bundle: {edge_bundle}
    cloud_task: digits
    bundle_task: digits
    threshold: 0.5
    placement: cloud_first
    when_offline: answer_only
    verify_on_cloud_failure: false
    deadline_ms: {DEADLINE_MS}
"""


@dataclass(frozen=True)
class Sent:
    """One request's outcome as the client saw it."""

    route: str
    reason: str
    latency_ms: float


class FakeUpstream:
    """A raw asyncio HTTP/1.1 responder in a thread: `/healthz` 200; `/v1/rerank` answers per
    `mode` ("ok": a valid RerankResponse; "503", "500"; "429": 429 + `Retry-After: 1`) and
    counts requests. Keep-alive aware; `set_mode`/`count` are thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._mode = "ok"
        self._count = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    def set_mode(self, mode: str) -> None:
        with self._lock:
            self._mode = mode

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    def start(self) -> None:
        self._thread.start()
        fut: Future[asyncio.Server] = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop
        )
        self._server = fut.result(5)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=2)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _answer(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if path.startswith("/healthz"):
            return 200, {}, b'{"status":"ok"}'
        with self._lock:
            self._count += 1
            mode = self._mode
        if mode == "429":
            return 429, {"Retry-After": "1"}, b'{"error":{"code":"overloaded","message":"x"}}'
        if mode in ("503", "500"):
            return int(mode), {}, b'{"error":{"code":"unavailable","message":"x"}}'
        items = orjson.loads(body)["items"]
        answer = results_body(items, label="7", model_version="fake-1", scored="all_labels")
        return 200, {}, orjson.dumps(answer)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                length = 0
                for line in lines[1:]:
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                status, headers, out = self._answer(path, body)
                extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(out)}\r\n{extra}\r\n".encode()
                    + out
                )
                await writer.drain()
        except (
            asyncio.IncompleteReadError,
            ConnectionError,
            asyncio.LimitOverrunError,
            asyncio.CancelledError,
        ):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()


@pytest.fixture
def fake_upstream() -> Iterator[FakeUpstream]:
    """A fake re-ranker on a free loopback port, mode "ok"."""
    up = FakeUpstream()
    up.start()
    try:
        yield up
    finally:
        up.stop()


def _send(client: httpx.Client, node: EdgeNode, x: np.ndarray) -> Sent:
    t0 = time.monotonic()
    resp = client.post(f"{node.url}/v1/infer", json={"task": "live", "inputs": x.tolist()})
    latency_ms = (time.monotonic() - t0) * 1000
    assert resp.status_code == 200, resp.text
    body = resp.json()
    return Sent(body["route"], body["reason"], latency_ms)


def _state(node: EdgeNode) -> str:
    return str(node.status()["connectivity"]["state"])  # type: ignore[index]


def _fail_until_open(
    client: httpx.Client, node: EdgeNode, x: np.ndarray, reasons: set[str]
) -> list[Sent]:
    """Send until the breaker opens; every answer is local, on time, with a failure reason."""
    sent: list[Sent] = []
    for i in range(FAILURES_TO_OPEN):
        s = _send(client, node, x[i])
        sent.append(s)
        assert s.latency_ms <= DEADLINE_MS + SLACK_MS, s
        assert (s.route, s.reason in reasons) == ("edge", True), s
    assert _state(node) == "offline"
    s = _send(client, node, x[0])  # known down: answered at once, no cloud call
    assert (s.route, s.reason) == ("edge", "cloud_unreachable"), s
    assert s.latency_ms <= DEADLINE_MS + SLACK_MS, s
    return sent


def _recovers(client: httpx.Client, node: EdgeNode, x: np.ndarray) -> None:
    """After the upstream recovers the breaker closes within open time + probe, and the
    next request is answered by the cloud."""
    t0 = time.monotonic()
    assert wait_until(lambda: _state(node) == "online", (1500 + 3 * PROBE_MS) / 1000 + 1.0)
    assert time.monotonic() - t0 <= 1500 / 1000 + 1.0
    s = _send(client, node, x[0])
    assert (s.route, s.latency_ms <= DEADLINE_MS + SLACK_MS) == ("cloud", True), s


@pytest.mark.ray
def test_latency_reset_hang_end_on_time(
    start_edge: Callable[..., EdgeNode],
    proxy: ThreadedFaultProxy,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
) -> None:
    """Latency past the deadline, resets and hangs: each request is answered locally within
    its deadline (cloud_timeout / cloud_error), the breaker opens after 3 failures and closes
    again once the link is restored."""
    x, _ = digits_split
    node = start_edge(
        _policy(demo_bundles_dir / "edge" / "digits"), f"http://127.0.0.1:{proxy.port}"
    )
    with httpx.Client(timeout=10) as client:
        s = _send(client, node, x[0])
        assert s.route == "cloud", s  # the link works before any fault
        for mode, latency, reasons in (
            ("latency", 250.0, {"cloud_timeout"}),
            ("reset", 0.0, {"cloud_error"}),
            ("hang", 0.0, {"cloud_timeout"}),
        ):
            proxy.set_mode(mode, latency_ms=latency)  # type: ignore[arg-type]
            _fail_until_open(client, node, x, reasons)
            proxy.set_mode("pass")
            _recovers(client, node, x)


def test_5xx_and_429_retries_within_policy(
    start_edge: Callable[..., EdgeNode],
    fake_upstream: FakeUpstream,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
) -> None:
    """503/500: at most max_attempts tries per escalation, local answers on time, breaker
    opens and closes; 429 + Retry-After (1 s) longer than the deadline: never retried."""
    x, _ = digits_split
    node = start_edge(
        _policy(demo_bundles_dir / "edge" / "digits"), f"http://127.0.0.1:{fake_upstream.port}"
    )
    with httpx.Client(timeout=10) as client:
        s = _send(client, node, x[0])
        assert s.route == "cloud" and fake_upstream.count == 1, s
        for mode in ("503", "500"):
            fake_upstream.set_mode(mode)
            before = fake_upstream.count
            sent = _fail_until_open(client, node, x, {"cloud_error"})
            tries = fake_upstream.count - before
            assert len(sent) < tries <= len(sent) * MAX_ATTEMPTS, (mode, tries)
            fake_upstream.set_mode("ok")
            _recovers(client, node, x)

        fake_upstream.set_mode("429")
        before = fake_upstream.count
        sent = _fail_until_open(client, node, x, {"cloud_error"})
        assert fake_upstream.count - before == len(sent)  # Retry-After > deadline: no retry
        fake_upstream.set_mode("ok")
        _recovers(client, node, x)
