"""LightHistogram exposes exactly what prometheus-client's Histogram exposes."""

from __future__ import annotations

import re
import threading

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from edge_node.observe.light_histogram import LightHistogram

BUCKETS = (1e-6, 5e-6, 1e-5, 2e-5, 0.5)


def _without_created(text: bytes) -> str:
    return re.sub(r"(_created(\{[^}]*\})?) \S+", r"\1 T", text.decode())


def test_exposition_equals_prometheus_histogram() -> None:
    """Same observations (on and between bounds, zero, beyond the last) give the same text."""
    reference, light = CollectorRegistry(), CollectorRegistry()
    ref = Histogram("x_seconds", "doc", buckets=BUCKETS, registry=reference)
    mine = LightHistogram("x_seconds", "doc", BUCKETS, light)
    for v in (0.0, 1e-6, 3e-6, 1e-5, 1.5e-5, 0.5, 7.0, 2e-5):
        ref.observe(v)
        mine.observe(v)
    assert _without_created(generate_latest(light)) == _without_created(generate_latest(reference))


def test_concurrent_observations_are_all_counted() -> None:
    """Observations from several threads at once are neither lost nor double counted."""
    registry = CollectorRegistry()
    h = LightHistogram("y_seconds", "doc", BUCKETS, registry)

    def work() -> None:
        for _ in range(20_000):
            h.observe(3e-6)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert registry.get_sample_value("y_seconds_count") == 80_000
    assert registry.get_sample_value("y_seconds_bucket", {"le": "5e-06"}) == 80_000
    assert registry.get_sample_value("y_seconds_sum") == pytest.approx(80_000 * 3e-6)


def test_duplicate_name_and_unsorted_buckets_are_refused() -> None:
    """A second family of the same name, or unsorted buckets, raise ValueError."""
    registry = CollectorRegistry()
    LightHistogram("z_seconds", "doc", BUCKETS, registry)
    with pytest.raises(ValueError):
        LightHistogram("z_seconds", "doc", BUCKETS, registry)
    with pytest.raises(ValueError, match="sorted"):
        LightHistogram("w_seconds", "doc", (1.0, 0.5), CollectorRegistry())
