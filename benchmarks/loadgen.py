"""A bounded HTTP load generator (run in its own process so it does not share the
server's interpreter): `connections` workers send `requests` POSTs in total (after
`warmup` untimed ones) and print one JSON line: latencies (ms) and throughput.

Run: `python -m benchmarks.loadgen URL BODY_FILE --connections 16 --requests 2000`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path


async def run(
    url: str, body: bytes, connections: int, requests: int, warmup: int
) -> dict[str, object]:
    """Send the requests; returns {"latencies_ms": [...], "seconds": wall, "errors": n}."""
    import httpx

    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        for _ in range(warmup):
            await client.post(url, content=body, headers=headers)
        lat: list[float] = []
        errors = 0
        left = requests

        async def worker() -> None:
            nonlocal left, errors
            while left > 0:
                left -= 1
                t = time.perf_counter()
                r = await client.post(url, content=body, headers=headers)
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
    a = ap.parse_args()
    out = asyncio.run(run(a.url, a.body_file.read_bytes(), a.connections, a.requests, a.warmup))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
