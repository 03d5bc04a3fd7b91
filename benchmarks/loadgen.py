"""A bounded HTTP/1.1 load generator in the spirit of wrk (run in its own process so it
does not share the server's interpreter): `connections` keep-alive connections send
`requests` POSTs in total (after `warmup` untimed ones) and print one JSON line:
latencies (ms), wall seconds and the count of error answers (status >= 400).

Each connection is an asyncio protocol on uvloop (when installed) that writes the
pre-built request bytes and parses only the status line and the framing of the answer
(Content-Length or chunked). A general-purpose client such as httpx spends ~10x more CPU
per call; on a 2-core machine whose other core runs the server, that CPU is taken from
the server under test, so every server would measure alike. wrk itself is not a Python
package; this client is the bounded equivalent that `make bench` can install anywhere.

Run: `python -m benchmarks.loadgen URL BODY_FILE --connections 16 --requests 2000`.
Optional: `--header "Name: value"` (repeatable) adds a request header; `--unique TEXT`
replaces every occurrence of TEXT in the body with a token unique to each request (warm-up
included, and across runs), e.g. to give every call its own request_id.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit


def bodies(body: bytes, unique: str | None) -> Iterator[bytes]:
    """Endless request bodies: `body` itself, or with `unique` replaced by a token unique to
    each body (a random run prefix + a counter, so separate runs never repeat one)."""
    if not unique:
        while True:
            yield body
    prefix, mark, n = uuid.uuid4().hex[:12], unique.encode(), 0
    while True:
        n += 1
        yield body.replace(mark, f"{prefix}-{n}".encode())


class ProtocolError(Exception):
    """The server's answer could not be framed (not HTTP/1.1 as this client reads it)."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._waiter: asyncio.Future[int] | None = None
        self._transport: asyncio.Transport | None = None
        self._lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or ConnectionError("connection closed by the server")
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(self._lost)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        try:
            status = self._complete()
        except ProtocolError as exc:
            waiter.set_exception(exc)
            return
        if status is not None:
            waiter.set_result(status)

    def _complete(self) -> int | None:
        """The status once one whole answer is buffered (then consumed), else None."""
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(buf[:end]).lower()
        try:
            status = int(head[9:12])
        except ValueError as exc:
            raise ProtocolError(f"bad status line: {head[:40]!r}") from exc
        start = end + 4
        i = head.find(b"\ncontent-length:")
        if i >= 0:
            j = head.find(b"\r", i)
            length = int(head[i + 16 : j if j >= 0 else len(head)])
            if len(buf) < start + length:
                return None
            del buf[: start + length]
            return status
        if b"transfer-encoding: chunked" in head:
            pos = start
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
                pos = eol + 2 + size + 2
                if len(buf) < pos:
                    return None
                if size == 0:
                    del buf[:pos]
                    return status
        raise ProtocolError("answer has neither Content-Length nor chunked framing")

    async def send(self, request: bytes) -> int:
        """Write `request` and wait for its answer; returns the status code."""
        if self._lost is not None or self._transport is None:
            raise self._lost or ConnectionError("not connected")
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        self._transport.write(request)
        return await self._waiter

    def close(self) -> None:
        """Close the connection."""
        if self._transport is not None:
            self._transport.close()


def _requests(
    url: str, source: Iterable[bytes], extra_headers: Mapping[str, str] | None
) -> tuple[str, int, Iterator[bytes]]:
    """(host, port, the POST requests carrying each body of `source`)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {"content-type": "application/json", **(extra_headers or {})}
    fixed = f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )

    def gen() -> Iterator[bytes]:
        for b in source:
            yield f"{fixed}content-length: {len(b)}\r\n\r\n".encode() + b

    return host, port, gen()


async def call_each(
    url: str, payloads: Sequence[bytes], extra_headers: Mapping[str, str] | None = None
) -> list[float]:
    """POST each payload once, in order, over one keep-alive connection; the latency (ms) of
    each call. Raises ProtocolError on an unreadable answer, RuntimeError on status >= 400."""
    host, port, requests = _requests(url, payloads, extra_headers)
    _, conn = await asyncio.get_running_loop().create_connection(_Connection, host, port)
    out: list[float] = []
    try:
        for request in requests:
            t = time.perf_counter()
            status = await conn.send(request)
            out.append((time.perf_counter() - t) * 1000)
            if status >= 400:
                raise RuntimeError(f"{url} answered {status}")
    finally:
        conn.close()
    return out


async def run(
    url: str,
    body: bytes,
    connections: int,
    requests: int,
    warmup: int,
    *,
    extra_headers: Mapping[str, str] | None = None,
    unique: str | None = None,
) -> dict[str, object]:
    """Send the requests; returns {"latencies_ms": [...], "seconds": wall, "errors": n}.
    Warm-up calls go over the first connection and are not timed."""
    host, port, source = _requests(url, bodies(body, unique), extra_headers)
    loop = asyncio.get_running_loop()
    conns = [(await loop.create_connection(_Connection, host, port))[1] for _ in range(connections)]
    try:
        for _ in range(warmup):
            await conns[0].send(next(source))
        lat: list[float] = []
        errors = 0
        left = requests
        clock = time.perf_counter

        async def worker(conn: _Connection) -> None:
            nonlocal left, errors
            while left > 0:
                left -= 1
                request = next(source)
                t = clock()
                status = await conn.send(request)
                lat.append((clock() - t) * 1000)
                errors += status >= 400

        t0 = clock()
        await asyncio.gather(*(worker(c) for c in conns))
        wall = clock() - t0
    finally:
        for c in conns:
            c.close()
    return {"latencies_ms": lat, "seconds": wall, "errors": errors}


def _event_loop_runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def main() -> None:
    """CLI entry point (prints the JSON result)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("body_file", type=Path)
    ap.add_argument("--connections", type=int, default=1)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--header", action="append", default=[], help='"Name: value"')
    ap.add_argument("--unique", default=None, help="body text replaced per request")
    a = ap.parse_args()
    extra: dict[str, str] = {}
    for h in a.header:
        name, _, value = h.partition(":")
        extra[name.strip()] = value.strip()
    with _event_loop_runner() as runner:
        out = runner.run(
            run(
                a.url,
                a.body_file.read_bytes(),
                a.connections,
                a.requests,
                a.warmup,
                extra_headers=extra,
                unique=a.unique,
            )
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
