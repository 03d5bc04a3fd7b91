"""A bounded HTTP load generator (run in its own process so it does not share the
server's interpreter): `connections` workers send `requests` POSTs in total (after
`warmup` untimed ones) and print one JSON line: latencies (ms) and throughput.

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
from collections.abc import Iterator, Mapping
from pathlib import Path


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
    """Send the requests; returns {"latencies_ms": [...], "seconds": wall, "errors": n}."""
    import httpx

    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"content-type": "application/json", **(extra_headers or {})}
    source = bodies(body, unique)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        for _ in range(warmup):
            await client.post(url, content=next(source), headers=headers)
        lat: list[float] = []
        errors = 0
        left = requests

        async def worker() -> None:
            nonlocal left, errors
            while left > 0:
                left -= 1
                content = next(source)
                t = time.perf_counter()
                r = await client.post(url, content=content, headers=headers)
                lat.append((time.perf_counter() - t) * 1000)
                errors += r.status_code >= 400

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        wall = time.perf_counter() - t0
    return {"latencies_ms": lat, "seconds": wall, "errors": errors}


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
    out = asyncio.run(
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
