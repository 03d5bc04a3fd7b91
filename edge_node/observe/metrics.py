"""Prometheus metrics of one edge node, on a registry of its own (no global state, so
several nodes can live in one test process). Exposed at `GET /metrics`.

Events (requests, latencies, cloud errors, loads, reloads) are counters and histograms
updated where they happen. Levels (queue depth/bytes/oldest age, breaker state, budget,
active versions) are read from the node's live state at scrape time by `StateCollector`,
so the request path never updates a gauge.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from edge_node.observe.light_histogram import LightHistogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class EdgeMetrics:
    """The metric families of an edge node. Thread-safe (prometheus-client locks)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._request_children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}
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
        # observed on every request's hot path: the light histogram (same exposition)
        self.inference_seconds = LightHistogram(
            "edgeroute_inference_seconds", "Edge model inference time", _LATENCY_BUCKETS, r
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
        self.decision_seconds = LightHistogram(
            "edgeroute_decision_seconds",
            "Routing decision time (decide, budget read included)",
            (1e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3),
            r,
        )
        self.model_loads = Counter(
            "edgeroute_model_loads_total",
            "Edge bundle loads by task and result (ok / error)",
            ["task", "result"],
            registry=r,
        )
        self.policy_reloads = Counter(
            "edgeroute_policy_reloads_total",
            "Policy activations by result (ok / error); the start-up load counts as one",
            ["result"],
            registry=r,
        )
        self.synced = Counter(
            "edgeroute_synced_total", "Queued items given a final answer", registry=r
        )
        self.model_updates = Counter(
            "edgeroute_model_updates_total",
            "Model version updates by task and result (applied / failed / canary_started / "
            "promoted / rolled_back)",
            ["task", "result"],
            registry=r,
        )

    def request_done(self, task: str, route: str, reason: str, seconds: float) -> None:
        """Count one answered request and observe its end-to-end latency. The labelled
        children are cached (prometheus' `labels()` checks and converts its arguments and
        takes a lock on every call)."""
        key = (task, route, reason)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = (
                self.requests.labels(task, route, reason),
                self.latency.labels(route),
            )
        child[0].inc()
        child[1].observe(seconds)

    def watch(self, source: Callable[[], NodeLevels]) -> None:
        """Expose the levels returned by `source()` at every scrape (call once per node).
        `source` must be cheap and thread-safe; it runs on the scraping thread."""
        self.registry.register(StateCollector(source))

    def render(self) -> bytes:
        """The exposition text of every family."""
        return generate_latest(self.registry)


_BREAKER_STATES = ("closed", "half_open", "open")


@dataclass(frozen=True, slots=True)
class NodeLevels:
    """The node's live levels at one instant (what `StateCollector` exposes)."""

    queue_depth: int
    queue_bytes: int
    queue_oldest_age_s: float
    breaker: str
    connectivity: str
    budget_calls: int
    budget_spent: float
    budget_calls_left: float  # +Inf when there is no calls budget
    budget_money_left: float  # +Inf when there is no money budget
    currency: str
    policy_revision: str
    model_versions: dict[str, str]
    results: dict[str, int]
    credentials_rejected: bool = False


class StateCollector(Collector):
    """Builds the level families from `source()` at scrape time."""

    def __init__(self, source: Callable[[], NodeLevels]) -> None:
        """`source` is called once per scrape."""
        self._source = source

    def describe(self) -> list[Metric]:
        """No families up front: the registry must not call `source` at registration."""
        return []

    def collect(self) -> Iterator[Metric]:
        """One sample per level, read now."""
        lv = self._source()
        yield _gauge("edgeroute_queue_depth", "Items in the durable queue", lv.queue_depth)
        yield _gauge("edgeroute_queue_bytes", "Payload bytes in the durable queue", lv.queue_bytes)
        yield _gauge(
            "edgeroute_queue_oldest_age_seconds",
            "Age of the oldest queued item (0 when empty)",
            lv.queue_oldest_age_s,
        )
        breaker = GaugeMetricFamily(
            "edgeroute_breaker_state",
            "Cloud circuit breaker: 1 for the current state",
            labels=["state"],
        )
        for state in _BREAKER_STATES:
            breaker.add_metric([state], 1.0 if lv.breaker == state else 0.0)
        yield breaker
        yield _gauge(
            "edgeroute_cloud_online",
            "1 online, 0.5 degraded, 0 offline",
            {"online": 1.0, "degraded": 0.5}.get(lv.connectivity, 0.0),
        )
        yield _gauge(
            "edgeroute_cloud_credentials_rejected",
            "1 while the cloud refuses the node's credentials (401/403): sync is paused",
            1.0 if lv.credentials_rejected else 0.0,
        )
        yield _gauge("edgeroute_budget_calls_today", "Cloud calls spent today", lv.budget_calls)
        spent = GaugeMetricFamily(
            "edgeroute_budget_spent", "Money spent on cloud calls today", labels=["currency"]
        )
        spent.add_metric([lv.currency], lv.budget_spent)
        yield spent
        yield _gauge(
            "edgeroute_budget_calls_left",
            "Cloud calls left today (+Inf: none)",
            lv.budget_calls_left,
        )
        left = GaugeMetricFamily(
            "edgeroute_budget_money_left",
            "Money left today (+Inf: no budget)",
            labels=["currency"],
        )
        left.add_metric([lv.currency], lv.budget_money_left)
        yield left
        results = GaugeMetricFamily(
            "edgeroute_results", "Stored results of queued requests by status", labels=["status"]
        )
        for status, n in sorted(lv.results.items()):
            results.add_metric([status], n)
        yield results
        info = InfoMetricFamily("edgeroute_policy", "The active policy", labels=["revision"])
        info.add_metric([lv.policy_revision], {})
        yield info
        models = InfoMetricFamily(
            "edgeroute_model", "The active edge model of each task", labels=["task", "version"]
        )
        for task, version in sorted(lv.model_versions.items()):
            models.add_metric([task, version], {})
        yield models


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)
