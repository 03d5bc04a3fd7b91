"""Prometheus metrics of one edge node, on a registry of its own (no global state, so
several nodes can live in one test process). Exposed at `GET /metrics`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class EdgeMetrics:
    """The metric families of an edge node. Thread-safe (prometheus-client locks)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "edgeroute_requests_total",
            "Requests by task, route and reason",
            ["task", "route", "reason"],
            registry=r,
        )
        self.latency = Histogram(
            "edgeroute_request_seconds",
            "End-to-end latency by route",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "edgeroute_inference_seconds",
            "Edge model inference time",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.cloud_seconds = Histogram(
            "edgeroute_cloud_call_seconds", "Cloud call time", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.cloud_errors = Counter(
            "edgeroute_cloud_errors_total", "Failed cloud calls", ["task", "code"], registry=r
        )
        self.dropped = Counter(
            "edgeroute_queue_dropped_total",
            "Queued items dropped by on_full: drop_oldest",
            registry=r,
        )
        self.queue_depth = Gauge("edgeroute_queue_depth", "Items in the durable queue", registry=r)
        self.synced = Counter(
            "edgeroute_synced_total", "Queued items given a final answer", registry=r
        )

    def render(self) -> bytes:
        """The exposition text of every family."""
        return generate_latest(self.registry)
