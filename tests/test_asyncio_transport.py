"""The asyncio network backend under httpx, against real servers on 127.0.0.1 (TCP and TLS):
keep-alive reuse, reconnects, timeouts, flow control and the CloudClient's error mapping."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import orjson
import pytest
import uvloop

from edge_node.cloud.asyncio_transport import AsyncioHTTPTransport
from edge_node.cloud.client import CloudClient
from router.errors import CloudTimeout, CloudUnavailable
from router.policy import CloudSettings
from router.wire import RerankItem, RerankResult
from tests.rerank_fakes import results_body
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


def client(port: int, scheme: str = "http", **kw: object) -> CloudClient:
    settings = CloudSettings.model_validate(
        {"url": f"{scheme}://127.0.0.1:{port}", "request_timeout_ms": 300,
         "retry": {"max_attempts": 1}}
    )  # fmt: skip
    transport = AsyncioHTTPTransport(**kw)  # type: ignore[arg-type]
    return CloudClient(settings, node_id="n1", transport=transport)


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
            pool = c._transport._pool  # the transport's httpcore connection pool
            for _ in range(3):
                await c.rerank(items(), deadline_s=2.0)
                await until(  # the client saw the close: no idle connection it would reuse
                    lambda: all(conn.has_expired() for conn in pool.connections),
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
            c = CloudClient(settings, node_id="n1", transport=AsyncioHTTPTransport())
            batch = items(40, size=12000)
            out = await c.rerank(batch, deadline_s=30.0)
            await c.aclose()
        assert len(out) == 40
        sent = orjson.loads(server.bodies[0])["items"]
        assert len(server.bodies[0]) > 5_000_000
        assert [it["inputs"] for it in sent] == [it.inputs for it in batch]

    asyncio.run(main())


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with `cryptography`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgeroute-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_tls_works_with_a_trusted_certificate_and_fails_closed_otherwise(
    tmp_path: Path, loop: str
) -> None:
    """https to a server whose certificate the client trusts succeeds (twice, one
    connection); with the default CAs the handshake fails as CloudUnavailable."""
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))

    async def main() -> None:
        server = HttpServer()
        async with serving(server, tls=server_ctx) as port:
            c = client(port, "https", verify=trusting)
            for _ in range(2):
                out = await c.rerank(items(), deadline_s=2.0)
                assert out[0].request_id == "r0"
            await c.aclose()
            assert server.connections == 1
            strict = client(port, "https")
            with pytest.raises(CloudUnavailable, match="ConnectError"):
                await strict.rerank(items(), deadline_s=2.0)
            await strict.aclose()

    (uvloop.run if loop == "uvloop" else asyncio.run)(main())


def test_the_transport_is_httpx_with_the_asyncio_backend() -> None:
    """A plain httpx.AsyncClient works over the transport (GET, status, body)."""

    async def main() -> None:
        server = HttpServer()
        async with serving(server) as port:
            async with httpx.AsyncClient(transport=AsyncioHTTPTransport()) as http:
                resp = await http.post(f"http://127.0.0.1:{port}/x", content=b"")
            assert resp.status_code == 200 and resp.json() == {"results": []}

    asyncio.run(main())
