"""The benchmarks' load generator against a real HTTP/1.1 server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from benchmarks import loadgen


async def _answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
) -> None:
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            break
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
        seen.append(body)
        path = head.split(b" ")[1]
        if path == b"/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                         b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")  # fmt: skip
        elif path == b"/bad":
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\nno")
        else:
            # the body split over two writes: the client must wait for all of it
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhe")
            await writer.drain()
            await asyncio.sleep(0.002)  # the delay is the behaviour under test
            writer.write(b"llo")
        await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def _server() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A tiny keep-alive HTTP server recording every body it receives."""
    seen: list[bytes] = []
    srv = await asyncio.start_server(lambda r, w: _answer(r, w, seen), "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        srv.close()


def test_run_sends_exactly_the_bounded_count() -> None:
    """`run` times `requests` calls over the connections, after `warmup` untimed ones."""

    async def go() -> tuple[dict[str, object], list[bytes]]:
        async with _server() as (base, seen):
            return await loadgen.run(f"{base}/ok", b'{"id": "X"}', 4, 37, 5, unique="X"), seen

    out, seen = asyncio.run(go())
    assert len(out["latencies_ms"]) == 37  # type: ignore[arg-type]
    assert out["errors"] == 0
    assert len(seen) == 42
    assert len(set(seen)) == 42  # every body got its own token


def test_run_counts_error_answers() -> None:
    """Answers with status >= 400 are counted as errors, not dropped."""

    async def go() -> dict[str, object]:
        async with _server() as (base, _):
            return await loadgen.run(f"{base}/bad", b"{}", 2, 10, 0)

    assert asyncio.run(go())["errors"] == 10


def test_call_each_reads_chunked_answers() -> None:
    """`call_each` frames chunked answers and sends each payload once, in order."""

    async def go() -> tuple[list[float], list[bytes]]:
        async with _server() as (base, seen):
            return await loadgen.call_each(f"{base}/chunked", [b"1", b"22", b"333"]), seen

    lat, seen = asyncio.run(go())
    assert len(lat) == 3
    assert seen == [b"1", b"22", b"333"]


def test_call_each_raises_on_an_error_status() -> None:
    """`call_each` stops with an error naming the status when the server refuses a call."""

    async def go() -> None:
        async with _server() as (base, _):
            await loadgen.call_each(f"{base}/bad", [b"{}"])

    with pytest.raises(RuntimeError, match="503"):
        asyncio.run(go())
