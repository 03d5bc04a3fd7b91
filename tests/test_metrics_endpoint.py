"""GET /metrics of a real edge node: every family is exposed and moves as traffic flows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeroute.netproxy import ThreadedFaultProxy
from tests.dashboard import dashboard_metrics
from tests.edge_fixtures import EdgeNode, policy_text
from tests.waiting import wait_until

pytestmark = pytest.mark.ray

FAMILIES = {
    "edgeroute_requests": "counter",
    "edgeroute_request_seconds": "histogram",
    "edgeroute_inference_seconds": "histogram",
    "edgeroute_decision_seconds": "histogram",
    "edgeroute_cloud_call_seconds": "histogram",
    "edgeroute_queue_depth": "gauge",
    "edgeroute_queue_bytes": "gauge",
    "edgeroute_queue_oldest_age_seconds": "gauge",
    "edgeroute_breaker_state": "gauge",
    "edgeroute_budget_calls_today": "gauge",
    "edgeroute_budget_spent": "gauge",
    "edgeroute_budget_calls_left": "gauge",
    "edgeroute_budget_money_left": "gauge",
    "edgeroute_model_loads": "counter",
    "edgeroute_policy_reloads": "counter",
    "edgeroute_policy_info": "gauge",
    "edgeroute_model_info": "gauge",
}


def scrape(node: EdgeNode) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of `/metrics` by (name, sorted labels); also checks the family types."""
    text = httpx.get(f"{node.url}/metrics", timeout=5).text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in FAMILIES.items():
        assert name in fams and fams[name].type == kind, name
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples
    }


def test_metric_families_move_with_traffic(
    start_edge: Callable[..., EdgeNode],
    proxy: ThreadedFaultProxy,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
    edge_margins: np.ndarray,
) -> None:
    """Edge, cloud and queued requests move the request counters, latency histograms,
    budget, breaker and queue levels; versions and loads are exposed from the start."""
    x, _ = digits_split
    policy = policy_text(demo_bundles_dir / "edge" / "digits", cost="  daily_calls: 100\n")
    node = start_edge(policy, f"http://127.0.0.1:{proxy.port}")
    sure, unsure = int(np.argmax(edge_margins)), int(np.argmin(edge_margins))
    m0 = scrape(node)
    assert m0[("edgeroute_model_loads_total", (("result", "ok"), ("task", "digits")))] == 1
    assert m0[("edgeroute_policy_reloads_total", (("result", "ok"),))] == 1
    assert any(k[0] == "edgeroute_model_info" and ("task", "digits") in k[1] for k in m0)
    assert m0[("edgeroute_breaker_state", (("state", "closed"),))] == 1
    assert m0[("edgeroute_budget_calls_left", ())] == 100

    edge_key = (
        "edgeroute_requests_total",
        (("reason", "confident"), ("route", "edge"), ("task", "digits")),
    )
    cloud_key = (
        "edgeroute_requests_total",
        (("reason", "below_threshold"), ("route", "cloud"), ("task", "digits")),
    )
    assert node.infer({"task": "digits", "inputs": x[sure].tolist()}).json()["route"] == "edge"
    assert node.infer({"task": "digits", "inputs": x[unsure].tolist()}).json()["route"] == "cloud"
    m1 = scrape(node)
    assert m1[edge_key] == m0.get(edge_key, 0) + 1
    assert m1[cloud_key] == m0.get(cloud_key, 0) + 1
    assert m1[("edgeroute_inference_seconds_count", ())] == 2
    assert m1[("edgeroute_decision_seconds_count", ())] >= 2
    assert m1[("edgeroute_cloud_call_seconds_count", ())] == 1
    assert m1[("edgeroute_request_seconds_count", (("route", "cloud"),))] == 1
    assert m1[("edgeroute_budget_calls_today", ())] == 1
    assert m1[("edgeroute_budget_calls_left", ())] == 99

    proxy.set_mode("down")
    for _ in range(4):  # fail the breaker open, then queue
        node.infer({"task": "digits", "inputs": x[unsure].tolist()})
    m2 = scrape(node)
    assert m2[("edgeroute_breaker_state", (("state", "open"),))] == 1
    assert m2[("edgeroute_queue_depth", ())] >= 1
    assert m2[("edgeroute_queue_bytes", ())] > 0
    age = ("edgeroute_queue_oldest_age_seconds", ())
    wait_until(lambda: scrape(node)[age] > 0, 10, 0.05, "the queued item's age to grow")
    assert scrape(node)[age] > 0
    exported = {name for name, _ in m2}
    missing = dashboard_metrics(cloud=False) - exported
    assert not missing, f"the Grafana dashboard queries series the node does not export: {missing}"
    proxy.set_mode("pass")
