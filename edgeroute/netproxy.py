"""A fault-injecting TCP proxy: forward bytes to an upstream, or break the link on demand.

Used by the demo (cut the edge node off from the cloud for a stretch, then restore it) and by
fault-injection tests. Modes, switchable at any time and from any thread:

- ``pass``: forward bytes both ways.
- ``down``: a cut link that fails fast. New connections are accepted and closed at once (the
  client sees EOF before any response); existing connections are closed. We accept-and-close
  rather than refuse connects because refusing means closing the listening socket, and
  re-binding the same port later can race with other processes on the machine; the client
  still fails within milliseconds either way.
- ``latency``: like pass, but every chunk is delayed by ``latency_ms`` in each direction, so a
  request/response round trip gains at least ``2 * latency_ms``.
- ``reset``: new and existing connections are aborted with a TCP RST (SO_LINGER 0, close).
- ``hang``: connections stay open, bytes are read and discarded, nothing is ever answered.

`FaultProxy` lives on one asyncio loop; `ThreadedFaultProxy` runs one in its own thread for
synchronous callers. Both count connections and bytes. After ``stop()`` no task of the proxy
is left running and every socket it opened is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Literal

ProxyModeName = Literal["pass", "down", "latency", "reset", "hang"]
_CHUNK = 65_536
_LINGER_RST = struct.pack("ii", 1, 0)


@dataclass(frozen=True, slots=True)
class ProxyMode:
    """One proxy mode; `latency_ms` only matters for ``latency``."""

    name: ProxyModeName = "pass"
    latency_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class ProxyStats:
    """Counters since start: connections accepted / open now, bytes forwarded each way."""

    connections_total: int = 0
    connections_active: int = 0
    bytes_to_upstream: int = 0
    bytes_to_client: int = 0


class _Conn:
    """One proxied connection: the client side, the upstream side once open, its task."""

    __slots__ = ("client", "task", "upstream")

    def __init__(self, client: asyncio.StreamWriter, task: asyncio.Task[None] | None) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.task = task


class FaultProxy:
    """A TCP proxy from ``listen_host:listen_port`` (0 = a free port) to the upstream.

    `start`/`stop` must be awaited on the loop the proxy runs on; `set_mode` and `stats` are
    thread-safe and may be called from any thread.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        connect_timeout_s: float = 2.0,
    ) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listen = (listen_host, listen_port)
        self._connect_timeout_s = connect_timeout_s
        self._lock = threading.Lock()
        self._mode = ProxyMode()
        self._stats = ProxyStats()
        self._conns: set[_Conn] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._port = 0

    @property
    def port(self) -> int:
        """The port the proxy listens on (valid after `start`)."""
        return self._port

    @property
    def mode(self) -> ProxyMode:
        """The current mode."""
        with self._lock:
            return self._mode

    def stats(self) -> ProxyStats:
        """A consistent snapshot of the counters. Thread-safe."""
        with self._lock:
            return self._stats

    async def start(self) -> None:
        """Bind and start accepting. Raises OSError if the address cannot be bound."""
        if self._server is not None:
            raise RuntimeError("proxy already started")
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._handle, *self._listen)
        self._port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening, abort every connection and wait (bounded) for their tasks to end.

        Idempotent. Afterwards no proxy task runs and no proxy socket is open.
        """
        server, self._server = self._server, None
        if server is not None:
            server.close()
        conns = list(self._conns)
        for conn in conns:
            self._abort(conn, rst=False)
        tasks = [c.task for c in conns if c.task is not None and not c.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        if server is not None:
            await server.wait_closed()

    def set_mode(self, name: ProxyModeName, *, latency_ms: float = 0.0) -> None:
        """Switch mode now. Thread-safe; from another thread, existing connections are cut
        (``down``/``reset``) on the proxy's loop shortly after this returns."""
        if name not in ("pass", "down", "latency", "reset", "hang"):
            raise ValueError(f"unknown proxy mode {name!r}")
        if latency_ms < 0:
            raise ValueError("latency_ms must be >= 0")
        with self._lock:
            self._mode = ProxyMode(name, float(latency_ms) if name == "latency" else 0.0)
        if name not in ("down", "reset"):
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._cut_all(rst=name == "reset")
        else:
            with contextlib.suppress(RuntimeError):  # loop closed meanwhile
                loop.call_soon_threadsafe(self._cut_all, name == "reset")

    # --- on the loop ------------------------------------------------------------------

    def _count(self, *, opened: int = 0, up: int = 0, down: int = 0) -> None:
        with self._lock:
            s = self._stats
            self._stats = ProxyStats(
                s.connections_total + max(opened, 0),
                s.connections_active + opened,
                s.bytes_to_upstream + up,
                s.bytes_to_client + down,
            )

    def _cut_all(self, rst: bool) -> None:
        for conn in list(self._conns):
            self._abort(conn, rst=rst)

    @staticmethod
    def _abort(conn: _Conn, *, rst: bool) -> None:
        if rst:
            sock = conn.client.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            conn.client.transport.abort()
        else:
            conn.client.transport.close()
        if conn.upstream is not None:
            conn.upstream.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer, asyncio.current_task())
        self._conns.add(conn)
        self._count(opened=1)
        try:
            mode = self.mode
            if mode.name in ("down", "reset"):
                self._abort(conn, rst=mode.name == "reset")
                return
            if mode.name == "hang":
                while await reader.read(_CHUNK):
                    pass
                return
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(*self._upstream), self._connect_timeout_s
                )
            except (OSError, TimeoutError):
                self._abort(conn, rst=True)  # the client sees the upstream as unreachable
                return
            conn.upstream = up_writer
            if self.mode.name in ("down", "reset"):  # switched while we were connecting
                self._abort(conn, rst=self.mode.name == "reset")
                return
            await asyncio.gather(
                self._pump(reader, up_writer, conn, to_upstream=True),
                self._pump(up_reader, writer, conn, to_upstream=False),
            )
        except asyncio.CancelledError:
            # Only stop() cancels handlers; end quietly (a cancelled stream handler task makes
            # asyncio 3.11 log a spurious "Exception in callback").
            pass
        finally:
            self._conns.discard(conn)
            self._count(opened=-1)
            self._abort(conn, rst=False)

    async def _pump(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        conn: _Conn,
        *,
        to_upstream: bool,
    ) -> None:
        try:
            while data := await src.read(_CHUNK):
                mode = self.mode
                if mode.name == "hang":
                    continue
                if mode.latency_ms > 0:
                    await asyncio.sleep(mode.latency_ms / 1000.0)
                if to_upstream:  # counted before the write, so a reader never sees it first
                    self._count(up=len(data))
                else:
                    self._count(down=len(data))
                dst.write(data)
                await dst.drain()
            if dst.can_write_eof() and not dst.is_closing():
                dst.write_eof()
        except (OSError, RuntimeError):
            self._abort(conn, rst=False)  # one side broke: take the other down too


class ThreadedFaultProxy:
    """A `FaultProxy` running on its own event loop in a daemon thread, for sync callers.

    `start()` returns once the port is bound; `stop()` stops the proxy, the loop and joins the
    thread (bounded). `set_mode`/`stats` are thread-safe. Usable as a context manager.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self._proxy = FaultProxy(
            upstream_host, upstream_port, listen_host=listen_host, listen_port=listen_port
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port the proxy listens on (valid after `start`)."""
        return self._proxy.port

    def stats(self) -> ProxyStats:
        """Counters snapshot (see `FaultProxy.stats`)."""
        return self._proxy.stats()

    @property
    def mode(self) -> ProxyMode:
        """The current mode."""
        return self._proxy.mode

    def set_mode(self, name: ProxyModeName, *, latency_ms: float = 0.0) -> None:
        """Switch mode (see `FaultProxy.set_mode`)."""
        self._proxy.set_mode(name, latency_ms=latency_ms)

    def start(self, timeout_s: float = 5.0) -> None:
        """Start the loop thread and bind; raises OSError if binding fails."""
        if self._thread is not None:
            raise RuntimeError("proxy already started")
        loop = asyncio.new_event_loop()
        ready: Future[None] = Future()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._proxy.start())
            except BaseException as exc:  # reported to start() below
                ready.set_exception(exc)
                return
            ready.set_result(None)
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
        self._thread.start()
        try:
            ready.result(timeout=timeout_s)
        except BaseException:
            self._thread.join(timeout_s)
            loop.close()
            self._thread = self._loop = None
            raise

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the proxy and its loop and join the thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._proxy.stop(), loop)
        try:
            fut.result(timeout=timeout_s)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout_s)
            if not thread.is_alive():
                loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> ThreadedFaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
