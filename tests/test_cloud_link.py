"""The cloud link (httpx's standard transport) against real servers on
127.0.0.1: keep-alive reuse, reconnects, timeouts, large bodies, TLS with a CA made in
the test (trusted, untrusted, wrong host name, client certificate required), a forwarding
proxy, and the CloudClient's error mapping."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest
import uvloop

from edge_node.cloud.client import CloudClient
from router.errors import CloudTimeout, CloudUnavailable, PolicyError
from router.policy import CloudSettings
from router.wire import RerankItem, RerankResult
from tests.forward_proxy import forward_proxy
from tests.rerank_fakes import results_body
from tests.tls_certs import TestCA
from tests.waiting import until


class HttpServer:
    """A minimal HTTP/1.1 server: answers each POST with the re-ranker's JSON for its items.

    mode: "ok" (keep-alive), "close" (closes each connection after its answer, without
    saying so), "hang" (reads the request, never answers), "cut" (sends half an answer and
    closes). `read_delay_s` slows reading the body (to fill the client's send buffers)."""

    def __init__(self, mode: str = "ok", read_delay_s: float = 0.0) -> None:
        self.mode = mode
        self.read_delay_s = read_delay_s
        self.connections = 0
        self.bodies: list[bytes] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = bytearray()
                while len(body) < length:
                    if self.read_delay_s:
                        # the delay is the behaviour under test
                        await asyncio.sleep(self.read_delay_s)
                    body += await reader.read(min(65536, length - len(body)))
                self.bodies.append(bytes(body))
                if self.mode == "hang":
                    await asyncio.sleep(3600)  # the delay is the behaviour under test
                answer = _answer(bytes(body))
                if self.mode == "cut":
                    writer.write(answer[: len(answer) // 2])
                    await writer.drain()
                    break
                writer.write(answer)
                await writer.drain()
                if self.mode == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # a cancelled handler ends quietly (the test is over)
        finally:
            writer.close()


def _answer(body: bytes) -> bytes:
    payload = orjson.dumps(results_body(orjson.loads(body)["items"] if body else []))
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}"
    return head.encode() + b"\r\n\r\n" + payload


@asynccontextmanager
async def serving(server: HttpServer, tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        srv.close()
        for task in server.tasks:
            task.cancel()
        await asyncio.gather(*server.tasks, return_exceptions=True)


def items(n: int = 1, size: int = 2) -> list[RerankItem]:
    return [
        RerankItem(
            task="t",
            request_id=f"r{i}",
            inputs=[0.123456789 + i + j for j in range(size)],
            candidates=["a"],
        )
        for i in range(n)
    ]


def client(port: int, scheme: str = "http", **cloud: object) -> CloudClient:
    """A CloudClient of the server on `port`, one try of at most 0.3 s; `cloud` adds policy
    settings of the `cloud` section (tls, proxy)."""
    settings = CloudSettings.model_validate(
        {"url": f"{scheme}://127.0.0.1:{port}", "request_timeout_ms": 300,
         "retry": {"max_attempts": 1}, **cloud}
    )  # fmt: skip
    return CloudClient(settings, node_id="n1")


def _pool(c: CloudClient) -> object:
    return c._transport._pool  # type: ignore[attr-defined]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_calls_share_one_keep_alive_connection(loop: str) -> None:
    """Three calls in a row get their results over one connection, on asyncio and uvloop."""

    async def main() -> None:
        server = HttpServer()
        async with serving(server) as port:
            c = client(port)
            for _ in range(3):
                out = await c.rerank(items(2), deadline_s=2.0)
                assert [r.request_id for r in out] == ["r0", "r1"]
                assert all(isinstance(r, RerankResult) for r in out)
            await c.aclose()
        assert server.connections == 1

    (uvloop.run if loop == "uvloop" else asyncio.run)(main())


def test_a_connection_the_server_closed_is_replaced_without_an_error() -> None:
    """The server drops each idle connection: every later call reconnects and succeeds."""

    async def main() -> None:
        server = HttpServer(mode="close")
        async with serving(server) as port:
            c = client(port)
            pool = _pool(c)  # httpx's httpcore connection pool
            for _ in range(3):
                await c.rerank(items(), deadline_s=2.0)
                await until(  # the client saw the close: no idle connection it would reuse
                    lambda: all(conn.has_expired() for conn in pool.connections),  # type: ignore[attr-defined]
                    timeout_s=2.0,
                    what="the server's close to reach the client",
                )
            await c.aclose()
        assert server.connections == 3

    asyncio.run(main())


def test_a_silent_server_times_out_at_the_per_try_limit() -> None:
    """No answer: CloudTimeout after the 0.3 s per-try timeout, not a hang."""

    async def main() -> float:
        async with serving(HttpServer(mode="hang")) as port:
            c = client(port)
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(CloudTimeout):
                await c.rerank(items(), deadline_s=5.0)
            await c.aclose()
            return loop.time() - started

    assert 0.25 <= asyncio.run(main()) < 2.0


def test_refused_and_cut_connections_are_cloud_unavailable() -> None:
    """Nothing listening, or an answer cut in half: CloudUnavailable (retryable)."""

    async def main() -> None:
        async with serving(HttpServer()) as port:
            pass  # closed: nothing listens on the port any more
        c = client(port)
        with pytest.raises(CloudUnavailable) as refused:
            await c.rerank(items(), deadline_s=1.0)
        assert refused.value.retryable
        await c.aclose()
        async with serving(HttpServer(mode="cut")) as port:
            c = client(port)
            with pytest.raises(CloudUnavailable):
                await c.rerank(items(), deadline_s=1.0)
            await c.aclose()

    asyncio.run(main())


def test_a_large_body_to_a_slow_reader_arrives_whole() -> None:
    """A ~6 MB request to a server reading 64 KiB per 2 ms fills the socket buffers; the
    write waits for them to drain and every byte arrives."""

    async def main() -> None:
        server = HttpServer(read_delay_s=0.002)
        async with serving(server) as port:
            settings = CloudSettings.model_validate(
                {"url": f"http://127.0.0.1:{port}", "request_timeout_ms": 20_000}
            )
            c = CloudClient(settings, node_id="n1")
            batch = items(40, size=12000)
            out = await c.rerank(batch, deadline_s=30.0)
            await c.aclose()
        assert len(out) == 40
        sent = orjson.loads(server.bodies[0])["items"]
        assert len(server.bodies[0]) > 5_000_000
        assert [it["inputs"] for it in sent] == [it.inputs for it in batch]

    asyncio.run(main())


def _server_tls(
    ca: TestCA, hosts: tuple[str, ...], *, require_client: bool = False
) -> ssl.SSLContext:
    leaf = ca.issue("server", hosts=hosts)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(leaf.cert, leaf.key)
    if require_client:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(ca.bundle)
    return ctx


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_tls_to_a_server_signed_by_the_policy_ca_works_and_fails_closed_otherwise(
    tmp_path: Path, loop: str
) -> None:
    """With `tls.ca_bundle` naming the test CA, https calls succeed over one connection;
    with the system CAs the certificate is refused as CloudUnavailable naming TLS."""
    ca = TestCA(tmp_path)

    async def main() -> None:
        server = HttpServer()
        async with serving(server, tls=_server_tls(ca, ("127.0.0.1",))) as port:
            c = client(port, "https", tls={"ca_bundle": str(ca.bundle)})
            for _ in range(2):
                out = await c.rerank(items(), deadline_s=2.0)
                assert out[0].request_id == "r0"
            await c.aclose()
            assert server.connections == 1
            strict = client(port, "https")
            with pytest.raises(
                CloudUnavailable, match="TLS: certificate rejected: unable to get local issuer"
            ):
                await strict.rerank(items(), deadline_s=2.0)
            await strict.aclose()

    (uvloop.run if loop == "uvloop" else asyncio.run)(main())


def test_a_certificate_for_another_host_name_is_refused(tmp_path: Path) -> None:
    """A certificate signed by the trusted CA but issued for another name fails the host
    name check: CloudUnavailable, nothing reaches the server's handler."""
    ca = TestCA(tmp_path)

    async def main() -> None:
        server = HttpServer()
        async with serving(server, tls=_server_tls(ca, ("cloud.example.com",))) as port:
            c = client(port, "https", tls={"ca_bundle": str(ca.bundle)})
            with pytest.raises(CloudUnavailable, match=r"TLS: .*(mismatch|not valid)"):
                await c.rerank(items(), deadline_s=2.0)
            await c.aclose()
        assert server.bodies == []

    asyncio.run(main())


def test_a_server_requiring_a_client_certificate_accepts_only_the_nodes(tmp_path: Path) -> None:
    """mTLS: without `tls.client_cert` the server refuses the node (CloudUnavailable, no
    request handled); with a client certificate signed by its CA the call succeeds."""
    ca = TestCA(tmp_path)
    node = ca.issue("node", client=True)

    async def main() -> None:
        server = HttpServer()
        tls = _server_tls(ca, ("127.0.0.1",), require_client=True)
        async with serving(server, tls=tls) as port:
            anonymous = client(port, "https", tls={"ca_bundle": str(ca.bundle)})
            with pytest.raises(CloudUnavailable, match="cloud unreachable"):  # a reset or TLS alert
                await anonymous.rerank(items(), deadline_s=2.0)
            await anonymous.aclose()
            assert server.bodies == []
            mutual = client(
                port,
                "https",
                tls={"ca_bundle": str(ca.bundle), "client_cert": str(node.cert),
                     "client_key": str(node.key)},
            )  # fmt: skip
            out = await mutual.rerank(items(), deadline_s=2.0)
            await mutual.aclose()
        assert out[0].request_id == "r0" and len(server.bodies) == 1

    asyncio.run(main())


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_calls_go_through_the_policy_proxy(tmp_path: Path, scheme: str) -> None:
    """With `proxy` set, http calls are forwarded by the proxy (absolute-form requests)
    and https calls tunnel through it (CONNECT, TLS checked end to end)."""
    ca = TestCA(tmp_path)

    async def main() -> None:
        server = HttpServer()
        tls = _server_tls(ca, ("127.0.0.1",)) if scheme == "https" else None
        async with serving(server, tls=tls) as port, forward_proxy() as (proxy, proxy_url):
            c = client(port, scheme, proxy=proxy_url, tls={"ca_bundle": str(ca.bundle)})
            for _ in range(2):
                out = await c.rerank(items(), deadline_s=2.0)
                assert out[0].request_id == "r0"
            await c.aclose()
        assert len(server.bodies) == 2
        assert server.connections == 1  # both calls came over the proxy's one connection
        assert (proxy.tunnels, proxy.forwarded) == ((1, 0) if scheme == "https" else (0, 1))

    asyncio.run(main())


def test_unusable_tls_files_are_policy_errors_naming_the_field(tmp_path: Path) -> None:
    """A missing CA bundle or a key that does not match the certificate stops the client
    from being built, with a PolicyError naming the cloud.tls field and the file."""
    ca = TestCA(tmp_path)
    node, other = ca.issue("node", client=True), ca.issue("other", client=True)
    missing = tmp_path / "missing.pem"
    with pytest.raises(PolicyError) as err:
        client(1, "https", tls={"ca_bundle": str(missing)})
    assert err.value.issues[0].path == "cloud.tls.ca_bundle"
    assert str(missing) in str(err.value.issues[0])
    with pytest.raises(PolicyError) as err:
        client(1, "https", tls={"client_cert": str(node.cert), "client_key": str(other.key)})
    assert err.value.issues[0].path == "cloud.tls.client_cert"


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ({"ca_bundle": "certs/ca.pem"}, "must be an absolute path"),
        ({"client_cert": "/etc/node.crt"}, "must be set together"),
        ({"client_key": "/etc/node.key"}, "must be set together"),
        ({"ca_file": "/etc/ca.pem"}, "Extra inputs are not permitted"),
    ],
)
def test_tls_settings_are_checked_when_the_policy_loads(tls: dict[str, str], message: str) -> None:
    """Relative paths, a certificate without its key (or the reverse) and unknown keys
    are refused by the policy model."""
    with pytest.raises(ValueError, match=message):
        CloudSettings.model_validate({"tls": tls})
