"""Replica metrics of the cloud re-ranker, exported through Ray (`ray.serve.metrics`).

Ray Serve adds the `deployment`, `replica` and `application` tags itself and exports every
metric on each node's metrics export port in Prometheus format (prefixed `ray_`). Each
metric is mirrored in a plain counter so `/v1/stats` can show what this replica recorded.
Create a `ReplicaMetrics` only inside a replica (it needs a connected Ray).
"""

from __future__ import annotations

import threading
from typing import Any

LATENCY_BOUNDARIES_S = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]
BATCH_BOUNDARIES = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0]


class ReplicaMetrics:
    """The replica's Counter/Histogram objects plus a local mirror. Thread-safe."""

    def __init__(self) -> None:
        from ray.serve import metrics

        task_outcome: Any = ("task", "outcome")  # Ray's stub wrongly says tuple[str]

        self._lock = threading.Lock()
        self._mirror: dict[str, float] = {}
        self._requests: Any = metrics.Counter(
            "edgeroute_cloud_requests",
            description="HTTP calls answered by the re-ranker, by status code.",
            tag_keys=("status",),
        )
        self._items: Any = metrics.Counter(
            "edgeroute_cloud_items",
            description="Re-rank items answered, by task and outcome (computed/cached/failed).",
            tag_keys=task_outcome,
        )
        self._dedup_hits: Any = metrics.Counter(
            "edgeroute_cloud_dedup_hits",
            description="Items answered from the shared idempotency store.",
        )
        self._auth_failures: Any = metrics.Counter(
            "edgeroute_cloud_auth_failures",
            description="Calls refused with 401 (missing, wrong or revoked token).",
        )
        self._latency: Any = metrics.Histogram(
            "edgeroute_cloud_latency_seconds",
            description="Time to answer one HTTP call inside the replica, in seconds.",
            boundaries=LATENCY_BOUNDARIES_S,
            tag_keys=("status",),
        )
        self._batch: Any = metrics.Histogram(
            "edgeroute_cloud_batch_size",
            description="Items per model run (a @serve.batch batch or a batch request).",
            boundaries=BATCH_BOUNDARIES,
            tag_keys=("task",),
        )

    def _bump(self, key: str, by: float = 1.0) -> None:
        with self._lock:
            self._mirror[key] = self._mirror.get(key, 0.0) + by

    def request(self, status: int, latency_s: float) -> None:
        """Record one answered HTTP call that took `latency_s` seconds."""
        tags = {"status": str(status)}
        self._requests.inc(1, tags=tags)
        self._latency.observe(latency_s, tags=tags)
        self._bump(f"requests.{status}")
        self._bump("latency_observations")

    def items(self, task: str, outcome: str, count: int) -> None:
        """Record `count` items of `task` with `outcome` (computed, cached or failed)."""
        if count <= 0:
            return
        self._items.inc(count, tags={"task": task, "outcome": outcome})
        self._bump(f"items.{outcome}", count)
        if outcome == "cached":
            self._dedup_hits.inc(count)
            self._bump("dedup_hits", count)

    def auth_failure(self) -> None:
        """Record one 401."""
        self._auth_failures.inc(1)
        self._bump("auth_failures")

    def batch(self, task: str, size: int) -> None:
        """Record one model run over `size` items."""
        self._batch.observe(float(size), tags={"task": task})
        self._bump("batches")
        self._bump("batched_items", size)

    def snapshot(self) -> dict[str, float]:
        """A copy of the local mirror of every metric recorded by this replica."""
        with self._lock:
            return dict(self._mirror)
