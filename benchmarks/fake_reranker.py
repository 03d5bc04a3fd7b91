"""A fast fake cloud re-ranker for the queue and edge benchmarks: raw asyncio HTTP/1.1.

It answers `/v1/rerank*` with one fixed result per item of the request and anything else
with `{"status":"ok"}`, on keep-alive connections. Started as its own process with
`python -m benchmarks.bench_queue --serve PORT` (by bench_queue, bench_edge and
tests/test_offline_live_drain.py), so its work never shares a core's interpreter with the
edge code being measured.
"""

from __future__ import annotations

import asyncio
import re

import orjson

_ITEM_IDS = re.compile(rb'"task":"([^"\\]*)","request_id":"([^"\\]*)"')


def rerank_body(body: bytes) -> bytes:
    """The fake's answer: one result per item, in order. It finds the items' task and
    request_id with one regex over the body (the edge client writes `task` then
    `request_id` first in each item, and both are plain strings), so its cost does not
    grow with the inputs, and it answers both arms alike; the edge still parses and
    validates a full response."""
    return orjson.dumps(
        {
            "results": [
                {
                    "request_id": rid.decode(),
                    "task": task.decode(),
                    "label": "7",
                    "score": 0.9,
                    "candidates": [{"label": "7", "score": 0.9}],
                    "model_version": "fake-1",
                    "scored": "candidates",
                }
                for task, rid in _ITEM_IDS.findall(body)
            ]
        }
    )


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Serve one connection's requests in turn until the client closes it."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            length = next(
                (
                    int(h.split(":", 1)[1])
                    for h in lines[1:]
                    if h.lower().startswith("content-length:")
                ),
                0,
            )
            body = await reader.readexactly(length) if length else b""
            out = rerank_body(body) if path.startswith("/v1/rerank") else b'{"status":"ok"}'
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(out)}\r\n\r\n".encode()
                + out
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(port: int) -> None:
    """Serve on 127.0.0.1:`port` until cancelled."""
    server = await asyncio.start_server(_handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()
