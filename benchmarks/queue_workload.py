"""What the queue benchmarks (`benchmarks.bench_queue`) feed the queue and the node.

Edge-like queued items (64 float inputs), queue settings that never refuse an item, the
policy files of the drain and live-traffic benchmarks, and a prefilled queue directory.
Project modules are imported inside the functions, so importing this module stays cheap
(the fake re-ranker process imports `bench_queue`, and with it this module).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def make_item(i: int) -> Any:
    """A `QueuedItem` of task `digits` with request_id `bench-<i>`, enqueued now."""
    from edge_node.storage.queued_item import QueuedItem

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


def queue_settings(fsync: str) -> Any:
    """`QueueSettings` with the given fsync level, bounds no benchmark reaches, `reject`."""
    from router.policy import QueueSettings

    return QueueSettings.model_validate(
        {"max_items": 10_000_000, "max_bytes": 1 << 40, "on_full": "reject", "fsync": fsync}
    )


def drain_policy(bundle: Path, batch: int) -> str:
    """Task `digits` (what the backlog holds), synced `batch` items per call."""
    return f"""\
version: 1
node: {{id: bench-node}}
queue: {{max_items: 10000000, max_bytes: 1099511627776, on_full: reject}}
sync: {{batch_size: {batch}}}
tasks:
  digits: {{edge_bundle: {bundle}, threshold: 0.5, placement: cloud_first}}
"""


def live_policy(bundle: Path) -> str:
    """Task `later` (what the backlog holds) and task `local` (edge_only: live answers)."""
    return f"""\
version: 1
node: {{id: bench-node}}
cloud:
  url: http://127.0.0.1:9
  connect_timeout_ms: 200
  request_timeout_ms: 2000
  retry: {{max_attempts: 1, backoff_initial_ms: 10, backoff_max_ms: 50}}
  breaker: {{failure_threshold: 1, open_ms: 200, open_max_ms: 400, probe_interval_ms: 50}}
queue: {{max_items: 100000, max_bytes: 1073741824, on_full: reject}}
sync: {{batch_size: 64, interval_ms: 50, max_attempts: 3}}
cost: {{price_per_call: 0.0}}
tasks:
  later:
    {{edge_bundle: {bundle}, bundle_task: digits, cloud_task: digits, threshold: 0.5,
     placement: cloud_first}}
  local:
    {{edge_bundle: {bundle}, bundle_task: digits, threshold: 0.0, placement: edge_only,
     deadline_ms: 2000}}
"""


def prefill(queue_dir: Path, n: int, threads: int) -> None:
    """Queue `n` task-`later` items straight into a (stopped) node's queue directory,
    putting from `threads` threads; the queue is closed when this returns."""
    from concurrent.futures import ThreadPoolExecutor

    from edge_node.storage.queue_store import DurableQueue

    q = DurableQueue(queue_dir, queue_settings("os_crash_safe"))
    items = [make_item(i).model_copy(update={"task": "later"}) for i in range(n)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(q.put, items))
    q.close()
