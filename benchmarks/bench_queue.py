"""Benchmarks of the offline queue (issue 3), each against a baseline measured in the same run.

(a) Durable enqueue: `DurableQueue.put` of edge-like `QueuedItem`s (64 floats) from 8
    concurrent producer threads vs raw sqlite3 inserts of the same payload bytes (one
    shared connection guarded by a lock, one transaction per insert, WAL, the same
    `PRAGMA synchronous`), for both fsync levels. Goal: >= 0.5x the raw rate. The baseline
    gets its payloads pre-serialized and writes a 3-column table with one index;
    `DurableQueue.put` serializes the pydantic item itself and writes diskcache's table
    (two indexes, count/size triggers).
(b) Drain: items/s synced by the real `SyncWorker` (real CloudClient over HTTP, real queue
    and result store) against a fast fake re-ranker in its own process, batch_size 64 vs
    batch_size 1. Goal: >= 20x. Each run first warms its client (connection, lazy
    imports) with one untimed call, so neither side pays one-time costs. Both arms drain
    as the node does: `SyncWorker.drain` (rounds pipelined) under the node's collector
    settings (`edge_node.gc_tuning`); the fake finds the items' ids with a regex instead
    of parsing the inputs, so its cost barely grows with the batch. `DRAIN_ROUNDS` rounds
    of both arms, alternating which goes first; each arm's rate is its median round.
(c) Live traffic during a drain: local-answer latency of a real edge node process
    (sequential requests on one keep-alive connection) while it drains a prefilled
    backlog at full speed (batch 64, unpaced) into the fake re-ranker, vs the same
    requests with the cloud cut (no drain). Goal: p50 during the drain <= 3x idle p50 +
    3 ms (the bound of tests/test_offline_live_drain.py); p99 is reported.

Run: `python -m benchmarks.bench_queue`. Everything lives in a temp dir; the fake
re-ranker (`benchmarks.fake_reranker`, served by `python -m benchmarks.bench_queue --serve
PORT`) and edge node processes are stopped at the end. (c) needs the demo bundles: it
uses `$EDGEROUTE_MODELS` (default `models/`) and builds them there if missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from benchmarks.fake_reranker import serve
from benchmarks.queue_workload import drain_policy, live_policy, make_item, prefill, queue_settings
from benchmarks.stats import line, record, summary

PRODUCERS = 8
PUTS_PER_PRODUCER = {"os_crash_safe": 300, "per_write": 100}
DRAIN_ITEMS = {64: 4096, 1: 256}
DRAIN_ROUNDS = 5
"""Rounds of both arms, alternating which goes first; each arm's rate is its median round
(one short run of each swung the ratio by +-10% between runs)."""
LIVE_BACKLOG = 8000
LIVE_IDLE_SAMPLES = 500
MODELS = Path(os.environ.get("EDGEROUTE_MODELS", "models"))
_SYNCHRONOUS = {"os_crash_safe": "NORMAL", "per_write": "FULL"}


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
    from edge_node.storage.queue_store import DurableQueue

    n_each = PUTS_PER_PRODUCER[fsync]
    items = [make_item(i) for i in range(PRODUCERS * n_each)]
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

    queue = DurableQueue(tmp / f"queue-{fsync}", queue_settings(fsync))

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


async def _drain(tmp: Path, url: str, batch: int, tag: str = "") -> tuple[float, int, int]:
    """Drain a prefilled queue through a node built by its composition root (`Node`): its
    own sync worker, escalation step and budget, as a running node drains."""
    from edge_node.node import Node
    from edge_node.settings import EdgeSettings
    from edgeroute.demo_models import build_demo_bundles
    from router.wire import RerankItem

    if not (MODELS / "edge" / "digits" / "manifest.json").exists():
        build_demo_bundles(MODELS)
    n = DRAIN_ITEMS[batch]
    policy = tmp / f"drain-{batch}{tag}.yaml"
    policy.write_text(drain_policy((MODELS / "edge" / "digits").resolve(), batch))
    node = Node(
        EdgeSettings(
            policy_path=policy, data_dir=tmp / f"drain-{batch}{tag}", cloud_url=url,
            log_sample_rate=0.0,
        )
    )  # fmt: skip
    queue, worker = node.queue, node.sync
    for i in range(n):
        queue.put(make_item(i))
    warm = RerankItem(task="digits", request_id=f"warm-{batch}", inputs=[0.0] * 64)
    await node.client.rerank([warm], deadline_s=5.0)  # untimed: connection, lazy imports
    drains = 0
    t0 = time.perf_counter()
    try:
        while queue.depth:  # one drain empties the queue unless a round stores nothing
            report = await worker.drain()
            drains += 1
            if report.done == 0:
                raise RuntimeError(f"drain made no progress: {report}")
        elapsed = time.perf_counter() - t0
    finally:
        await node.stop()
    return elapsed, n, drains


@contextlib.contextmanager
def _node_gc() -> Iterator[None]:
    """The collector settings of an edge node process (`edge_node.gc_tuning.tune_gc`, which
    `edgeroute edge serve` applies after startup) while the block runs, then the previous
    ones again: the drain is measured as the node runs it, and the other benchmarks of
    this process (`make bench` runs every module in one) are not affected."""
    from edge_node.gc_tuning import tune_gc

    before = gc.get_threshold()
    tune_gc()
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def bench_drain(tmp: Path) -> dict[str, object]:
    """Items/s drained with batch_size 64 vs 1 against the fake re-ranker, both arms under
    the node's collector settings."""
    from edgeroute import processes

    port = processes.free_port()
    log_path = tmp / "fake-reranker.log"
    proc = processes.start(
        [sys.executable, "-m", "benchmarks.bench_queue", "--serve", str(port)], log_path
    )
    url = f"http://127.0.0.1:{port}"
    try:
        processes.wait_http(f"{url}/healthz", proc, 30, log_path)
        runs: dict[int, list[float]] = {64: [], 1: []}
        for k in range(DRAIN_ROUNDS):
            for batch in (64, 1) if k % 2 == 0 else (1, 64):
                with _node_gc():
                    elapsed, n, drains = asyncio.run(_drain(tmp, url, batch, f"-{k}"))
                runs[batch].append(n / elapsed)
                per_round = elapsed / -(-n // batch) * 1000
                print(
                    f"drain {k + 1}/{DRAIN_ROUNDS}, batch_size={batch}: {n} items in "
                    f"{elapsed:.2f}s ({n / elapsed:.0f}/s, {per_round:.2f} ms per round, "
                    f"{drains} drain call(s))"
                )
        rates = {batch: float(statistics.median(r)) for batch, r in runs.items()}
        print(f"drain medians: batch 64 {rates[64]:.0f}/s, batch 1 {rates[1]:.0f}/s")
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


# --- live traffic during a drain ---------------------------------------------------------


def _live(client: Any, url: str, body: dict[str, Any], n: int) -> list[float]:
    """`n` sequential local answers; latencies in ms. Raises if one is not a final 200."""
    out: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        resp = client.post(f"{url}/v1/infer", json=body)
        out.append((time.perf_counter() - t0) * 1000)
        if resp.status_code != 200 or resp.json().get("final") is not True:
            raise RuntimeError(f"live request failed: {resp.status_code} {resp.text[:200]}")
    return out


def _depth(client: Any, url: str) -> int:
    return int(client.get(f"{url}/v1/status").json()["queue"]["depth"])


def bench_live_during_drain(tmp: Path) -> dict[str, object]:
    """Live local-answer p50 while a backlog drains at full speed vs with no drain."""
    import httpx

    from edgeroute import processes
    from edgeroute.demo_models import build_demo_bundles, load_test_split

    if not (MODELS / "edge" / "digits" / "manifest.json").exists():
        build_demo_bundles(MODELS)
    x, _ = load_test_split(MODELS)
    policy = tmp / "live.yaml"
    policy.write_text(live_policy((MODELS / "edge" / "digits").resolve()))
    data = tmp / "live-data"
    prefill(data / "queue", LIVE_BACKLOG, PRODUCERS)
    cport, eport = processes.free_port(), processes.free_port()
    url = f"http://127.0.0.1:{eport}"
    edge_log, cloud_log = tmp / "live-edge.log", tmp / "live-cloud.log"
    edge = processes.start(
        processes.edgeroute_cmd("edge", "serve", "--policy", str(policy), "--data-dir",
            str(data), "--port", str(eport), "--cloud-url", f"http://127.0.0.1:{cport}",
            "--log-level", "warning"),
        edge_log,
    )  # fmt: skip
    cloud = None
    body = {"task": "local", "inputs": x[0].tolist()}
    try:
        processes.wait_http(f"{url}/readyz", edge, 60, edge_log)
        with httpx.Client(timeout=10) as client:
            _live(client, url, body, 50)  # warm-up
            idle = _live(client, url, body, LIVE_IDLE_SAMPLES)  # cloud cut: no drain
            cloud = processes.start(
                [sys.executable, "-m", "benchmarks.bench_queue", "--serve", str(cport)], cloud_log
            )
            processes.wait_http(f"http://127.0.0.1:{cport}/healthz", cloud, 30, cloud_log)
            during: list[float] = []
            depth, t0 = _depth(client, url), time.perf_counter()
            while depth and time.perf_counter() - t0 < 120:
                chunk = _live(client, url, body, 10)
                after = _depth(client, url)
                if 0 < after < depth:  # the drain ran during the whole chunk
                    during += chunk
                depth = after
            drain_s = time.perf_counter() - t0
    finally:
        if cloud is not None:
            processes.stop(cloud, timeout_s=10)
        processes.stop(edge, timeout_s=10)
    if depth or not during:
        raise RuntimeError(f"the backlog did not drain ({depth} left)")
    idle_s, drain_s_summary = summary(idle), summary(during)
    print(f"live local answers, {LIVE_BACKLOG} items drained in ~{drain_s:.1f}s (ms):")
    print(line("idle (cloud cut, no drain)", idle_s, "ms"))
    print(line(f"during drain ({len(during)} samples)", drain_s_summary, "ms"))
    print(f"  p99: idle {idle_s['p99']:.2f} ms, during drain {drain_s_summary['p99']:.2f} ms")
    return record(
        "queue_live_p50_during_drain_vs_idle_ms",
        drain_s_summary["p50"],
        idle_s["p50"],
        "<= 3x idle + 3 ms",
        "ms",
        drain_s_summary["p50"] <= 3 * idle_s["p50"] + 3,
    )


def main() -> list[dict[str, object]]:
    """Run (a) for both fsync levels, (b) and (c); return their records."""
    records: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as d:
        tmp = Path(d)
        for fsync in ("os_crash_safe", "per_write"):
            records.append(bench_enqueue(tmp, fsync))
        records.append(bench_drain(tmp))
        records.append(bench_live_during_drain(tmp))
    return records


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        asyncio.run(serve(int(sys.argv[2])))
    else:
        main()
