"""Benchmarks of the offline queue (issue 3), each against a baseline measured in the same run.

(a) Durable enqueue: `DurableQueue.put` of edge-like `QueuedItem`s (64 floats) from 8
    concurrent producer threads vs raw sqlite3 inserts of the same payload bytes (one
    shared connection guarded by a lock, one transaction per insert, WAL, the same
    `PRAGMA synchronous`), for both fsync levels. Goal: >= 0.5x the raw rate.
(b) Drain: items/s synced by the real `SyncWorker` (real CloudClient over HTTP, real queue
    and result store) against a fast fake re-ranker in its own process, batch_size 64 vs
    batch_size 1. Goal: >= 20x.

Run: `python -m benchmarks.bench_queue`. Everything lives in a temp dir; the fake
re-ranker process is stopped at the end.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks.stats import line, record, summary

PRODUCERS = 8
PUTS_PER_PRODUCER = {"os_crash_safe": 300, "per_write": 100}
DRAIN_ITEMS = {64: 2048, 1: 256}
_SYNCHRONOUS = {"os_crash_safe": "NORMAL", "per_write": "FULL"}


def _item(i: int) -> Any:
    from edge_node.queue_store import QueuedItem

    return QueuedItem(
        request_id=f"bench-{i:08d}",
        task="digits",
        cloud_task="digits",
        inputs=[float(j) / 7.0 for j in range(64)],
        candidates=["1", "7", "9"],
        edge_label="7",
        edge_score=0.41,
        edge_candidates=[("7", 0.41), ("1", 0.3), ("9", 0.2)],
        model_version="digits-edge-1",
        enqueued_at=time.time(),
        reason="below_threshold",
    )


def _queue_settings(fsync: str) -> Any:
    from router.policy import QueueSettings

    return QueueSettings.model_validate(
        {"max_items": 10_000_000, "max_bytes": 1 << 40, "on_full": "reject", "fsync": fsync}
    )


def _producers(work: Any, n_each: int) -> tuple[float, list[float]]:
    """Run `work(i)` for PRODUCERS * n_each distinct i on PRODUCERS threads; (wall s, per-call
    latencies in ms)."""
    lat: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(PRODUCERS + 1)

    def run(t: int) -> None:
        mine: list[float] = []
        barrier.wait()
        for k in range(n_each):
            t0 = time.perf_counter()
            work(t * n_each + k)
            mine.append((time.perf_counter() - t0) * 1000)
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(PRODUCERS)]
    for th in threads:
        th.start()
    barrier.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join()
    return time.perf_counter() - t0, lat


def bench_enqueue(tmp: Path, fsync: str) -> dict[str, object]:
    """Durable puts/s vs raw sqlite inserts/s at the same synchronous level."""
    from edge_node.queue_store import DurableQueue

    n_each = PUTS_PER_PRODUCER[fsync]
    items = [_item(i) for i in range(PRODUCERS * n_each)]
    payloads = [orjson.dumps(it.model_dump(mode="json")) for it in items]

    conn = sqlite3.connect(tmp / f"raw-{fsync}.db", isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={_SYNCHRONOUS[fsync]}")
    conn.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, key TEXT UNIQUE, value BLOB)")
    raw_lock = threading.Lock()

    def raw(i: int) -> None:
        with raw_lock:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO q (key, value) VALUES (?, ?)", (items[i].request_id, payloads[i])
            )
            conn.execute("COMMIT")

    queue = DurableQueue(tmp / f"queue-{fsync}", _queue_settings(fsync))

    def ours(i: int) -> None:
        queue.put(items[i])

    raw_s, raw_lat = _producers(raw, n_each)
    ours_s, ours_lat = _producers(ours, n_each)
    conn.close()
    assert queue.depth == len(items), "every put must be queued"
    queue.close()
    total = len(items)
    print(f"enqueue, fsync={fsync}, {PRODUCERS} producers, {total} items (ms per put):")
    print(line("DurableQueue.put", summary(ours_lat), "ms"))
    print(line(f"raw sqlite3 insert (synchronous={_SYNCHRONOUS[fsync]})", summary(raw_lat), "ms"))
    ours_rate, raw_rate = total / ours_s, total / raw_s
    return record(
        f"queue_enqueue_{fsync}_puts_per_s",
        ours_rate,
        raw_rate,
        ">= 0.5x raw sqlite",
        "items/s",
        ours_rate >= 0.5 * raw_rate,
    )


# --- drain ------------------------------------------------------------------------------


def _rerank_body(body: bytes) -> bytes:
    items = orjson.loads(body)["items"]
    return orjson.dumps(
        {
            "results": [
                {
                    "request_id": it["request_id"],
                    "task": it["task"],
                    "label": "7",
                    "score": 0.9,
                    "candidates": [{"label": "7", "score": 0.9}],
                    "model_version": "fake-1",
                    "scored": "candidates",
                }
                for it in items
            ]
        }
    )


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
            out = _rerank_body(body) if path.startswith("/v1/rerank") else b'{"status":"ok"}'
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


async def _serve(port: int) -> None:
    server = await asyncio.start_server(_handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


async def _drain(tmp: Path, url: str, batch: int) -> tuple[float, int, list[float]]:
    from edge_node.cloud_client import CloudClient
    from edge_node.connectivity import ConnectivityMonitor
    from edge_node.queue_store import DurableQueue
    from edge_node.result_store import ResultStore
    from edge_node.sync_worker import SyncWorker
    from router.policy import CloudSettings, SyncSettings

    n = DRAIN_ITEMS[batch]
    queue = DurableQueue(tmp / f"drain-q-{batch}", _queue_settings("os_crash_safe"))
    results = ResultStore(tmp / f"drain-r-{batch}")
    for i in range(n):
        queue.put(_item(i))
    cloud = CloudSettings.model_validate({"url": url})
    client = CloudClient(cloud, node_id="bench-node", token="t")
    monitor = ConnectivityMonitor(cloud.breaker)
    sync = SyncSettings.model_validate({"batch_size": batch})
    worker = SyncWorker(queue, results, client, monitor, sync, log=_NullLog())
    rounds: list[float] = []
    t0 = time.perf_counter()
    try:
        while queue.depth:
            r0 = time.perf_counter()
            report = await worker.run_once()
            rounds.append((time.perf_counter() - r0) * 1000)
            if report.done == 0:
                raise RuntimeError(f"drain made no progress: {report}")
        elapsed = time.perf_counter() - t0
    finally:
        await client.aclose()
        queue.close()
        results.close()
    return elapsed, n, rounds


class _NullLog:
    """A logger that drops everything (the drain's per-item info logs are not measured)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


def bench_drain(tmp: Path) -> dict[str, object]:
    """Items/s drained with batch_size 64 vs 1 against the fake re-ranker."""
    from edgeroute import processes

    port = processes.free_port()
    log_path = tmp / "fake-reranker.log"
    proc = processes.start(
        [sys.executable, "-m", "benchmarks.bench_queue", "--serve", str(port)], log_path
    )
    url = f"http://127.0.0.1:{port}"
    try:
        processes.wait_http(f"{url}/healthz", proc, 30, log_path)
        rates: dict[int, float] = {}
        for batch in (64, 1):
            elapsed, n, rounds = asyncio.run(_drain(tmp, url, batch))
            rates[batch] = n / elapsed
            print(f"drain, batch_size={batch}: {n} items in {elapsed:.2f}s ({rates[batch]:.0f}/s)")
            print(line(f"run_once (batch {batch})", summary(rounds), "ms"))
    finally:
        processes.stop(proc, timeout_s=10)
    return record(
        "queue_drain_batch64_vs_1_items_per_s",
        rates[64],
        rates[1],
        ">= 20x one-by-one",
        "items/s",
        rates[64] >= 20 * rates[1],
    )


def main() -> list[dict[str, object]]:
    """Run (a) for both fsync levels and (b); return their records."""
    records: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as d:
        tmp = Path(d)
        for fsync in ("os_crash_safe", "per_write"):
            records.append(bench_enqueue(tmp, fsync))
        records.append(bench_drain(tmp))
    return records


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        asyncio.run(_serve(int(sys.argv[2])))
    else:
        main()
