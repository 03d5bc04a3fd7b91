"""httpx's HTTP transport on a network backend written on asyncio's own transports.

httpx's `AsyncHTTPTransport` sends through an httpcore connection pool whose default
network backend is anyio: every read and write opens an anyio cancel scope
(`fail_after`) and passes a checkpoint, which is a measurable share of a small call's CPU.
This backend skips both, which lowers the latency of the edge node's one hot outbound call
(an escalation to the cloud re-ranker) under uvloop and under asyncio's default loop.

Only the socket layer changes. Everything else is httpx's and httpcore's: the pool,
keep-alive and expiry, HTTP/1.1 framing (h11), TLS through the `ssl` context httpx builds
(`verify`), and the error mapping (the backend raises httpcore's `ConnectError`,
`ConnectTimeout`, `ReadError`, `ReadTimeout`, `WriteError`, `WriteTimeout`; httpx maps
them to its own). The backend is httpcore's public extension point (`network_backend`);
httpx's transport does not take it as an argument yet (encode/httpx#3749), so
`AsyncioHTTPTransport` builds its pool with it.

Must be used from one running asyncio event loop (any loop: asyncio's or uvloop).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Coroutine, Iterable
from typing import Any, cast

import httpcore
import httpx

_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)  # httpx's defaults
_MAX_BUFFER = 1 << 20  # stop reading from the socket while this much is unread


class _StreamProtocol(asyncio.Protocol):
    """Buffers what arrives and wakes the one reader; tracks write flow control."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.transport: asyncio.Transport | None = None
        self._reader: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._paused = False
        self.reading_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _MAX_BUFFER and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_writer()

    def readable_future(self) -> asyncio.Future[None]:
        self._reader = asyncio.get_running_loop().create_future()
        return self._reader

    def drained_future(self) -> asyncio.Future[None] | None:
        if not self._paused:
            return None
        self._drain = asyncio.get_running_loop().create_future()
        return self._drain

    def _wake_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    def _wake_writer(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One TCP (or TLS) connection. Not safe for concurrent readers or writers: httpcore
    uses a connection for one request at a time."""

    def __init__(self, transport: asyncio.Transport, protocol: _StreamProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Up to `max_bytes` received bytes; b"" once the peer has closed. Raises
        httpcore.ReadTimeout after `timeout` seconds without data, httpcore.ReadError if
        the connection broke."""
        proto = self._protocol
        if not proto.buffer and not proto.eof:
            waiter = proto.readable_future()
            try:
                if timeout is None:
                    await waiter
                else:
                    async with asyncio.timeout(timeout):
                        await waiter
            except TimeoutError as exc:
                raise httpcore.ReadTimeout(f"no data within {timeout}s") from exc
        if proto.buffer:
            data = bytes(proto.buffer[:max_bytes])
            del proto.buffer[:max_bytes]
            if proto.reading_paused and len(proto.buffer) <= _MAX_BUFFER // 2:
                proto.reading_paused = False
                if not proto.eof and proto.transport is not None:
                    proto.transport.resume_reading()  # the socket's transport, under any TLS
            return data
        if proto.error is not None:
            raise httpcore.ReadError(str(proto.error) or type(proto.error).__name__)
        return b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Queue `buffer` on the socket; waits (up to `timeout`) only while the kernel and
        the transport's buffer are full. Raises httpcore.WriteError on a closed or broken
        connection, httpcore.WriteTimeout if it stays full."""
        if not buffer:
            return
        if self._transport.is_closing() or self._protocol.error is not None:
            raise httpcore.WriteError("connection closed")
        self._transport.write(buffer)
        drained = self._protocol.drained_future()
        if drained is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await drained
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(f"could not send within {timeout}s") from exc
        if self._protocol.error is not None:
            raise httpcore.WriteError(str(self._protocol.error))

    async def aclose(self) -> None:
        """Close the connection (what is queued is still sent)."""
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> AsyncioStream:
        """The same connection upgraded to TLS (handshake within `timeout`). Raises
        httpcore.ConnectTimeout / ConnectError, closing the connection."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                tls = await loop.start_tls(
                    self._transport, self._protocol, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError as exc:
            self._transport.close()
            raise httpcore.ConnectTimeout(f"TLS handshake not done within {timeout}s") from exc
        except (OSError, ssl.SSLError) as exc:
            self._transport.close()
            raise httpcore.ConnectError(str(exc)) from exc
        if tls is None:  # pragma: no cover - only when the transport closed meanwhile
            raise httpcore.ConnectError("connection closed during the TLS handshake")
        return AsyncioStream(tls, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        """What httpcore asks of a stream: `is_readable` (data or EOF waiting: an idle
        connection the server closed), `ssl_object`, `client_addr`, `server_addr`,
        `socket`; None for anything else."""
        if info == "is_readable":
            return bool(self._protocol.buffer) or self._protocol.eof
        names = {
            "ssl_object": "ssl_object",
            "client_addr": "sockname",
            "server_addr": "peername",
            "socket": "socket",
        }
        return self._transport.get_extra_info(names[info]) if info in names else None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend on the running asyncio loop's transports."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> AsyncioStream:
        """A connected stream (TCP_NODELAY on, as asyncio sets it). Raises
        httpcore.ConnectTimeout / ConnectError."""
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        opening = loop.create_connection(_StreamProtocol, host, port, local_addr=local)
        return await _connected(opening, timeout, socket_options)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> AsyncioStream:
        """A stream on a Unix socket. Raises httpcore.ConnectTimeout / ConnectError."""
        opening = asyncio.get_running_loop().create_unix_connection(_StreamProtocol, path)
        return await _connected(opening, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        """asyncio.sleep."""
        await asyncio.sleep(seconds)


async def _connected(
    opening: Coroutine[Any, Any, tuple[asyncio.BaseTransport, asyncio.BaseProtocol]],
    timeout: float | None,
    options: Iterable[Any] | None,
) -> AsyncioStream:
    """The stream of the connection `opening` makes within `timeout`, with the socket
    `options` set. Raises httpcore.ConnectTimeout / ConnectError."""
    try:
        async with asyncio.timeout(timeout):
            transport, protocol = await opening
    except TimeoutError as exc:
        raise httpcore.ConnectTimeout(f"could not connect within {timeout}s") from exc
    except OSError as exc:
        raise httpcore.ConnectError(str(exc)) from exc
    sock: socket.socket | None = transport.get_extra_info("socket")
    if sock is not None:
        for option in options or ():
            sock.setsockopt(*option)
    return AsyncioStream(cast(asyncio.Transport, transport), cast(_StreamProtocol, protocol))


class AsyncioHTTPTransport(httpx.AsyncHTTPTransport):
    """`httpx.AsyncHTTPTransport` (no proxy, HTTP/1.1) whose connection pool uses
    `AsyncioBackend`. `verify` is httpx's (True: the system/certifi CAs and SSL_CERT_FILE;
    an `ssl.SSLContext`; a CA bundle path; False). No transport-level retries."""

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | str | bool = True,
        limits: httpx.Limits = _LIMITS,
    ) -> None:
        context = httpx.create_ssl_context(verify=verify)
        super().__init__(verify=context, limits=limits, retries=0)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            retries=0,
            network_backend=AsyncioBackend(),
        )
