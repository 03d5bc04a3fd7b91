"""A Prometheus histogram for the per-request hot path, cheaper than prometheus-client's.

prometheus-client's `Histogram.observe` takes two locks (sum, bucket) and walks the bucket
list in Python, twice per request (inference and decision time), which is not small next
to the model call of a small edge model. `LightHistogram` finds the bucket by bisection
and updates one count and the sum under one lock, and exposes exactly what a
prometheus-client `Histogram` without labels exposes (`_bucket{le=...}`, `_count`, `_sum`,
and `_created`), as a collector of the given registry.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Iterator, Sequence

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString


class LightHistogram(Collector):
    """A label-less histogram: `observe` is thread-safe (one lock) and O(log buckets);
    `collect` returns a consistent snapshot (counts and sum read under the same lock)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        """Register a histogram `name` (without the `_seconds`-style suffixes added by
        Prometheus: `_bucket`, `_count`, `_sum`) with upper bounds `buckets` (sorted,
        +Inf added) in `registry`. Raises ValueError for unsorted buckets and like
        `CollectorRegistry.register` for a duplicate name."""
        bounds = [float(b) for b in buckets if not math.isinf(b)]
        if bounds != sorted(bounds):
            raise ValueError("buckets must be sorted")
        self._name = name
        self._doc = documentation
        self._bounds = bounds
        self._les = [floatToGoString(b) for b in bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0
        self._created = time.time()
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, amount: float) -> None:
        """Count one observation of `amount` in the first bucket whose bound is >= it."""
        i = bisect.bisect_left(self._bounds, amount)
        with self._lock:
            self._counts[i] += 1
            self._sum += amount

    def collect(self) -> Iterator[HistogramMetricFamily]:
        """The histogram family, cumulative as Prometheus expects."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, running = [], 0
        for le, c in zip(self._les, counts, strict=True):
            running += c
            cumulative.append((le, float(running)))
        family = HistogramMetricFamily(self._name, self._doc, unit="")
        family.add_metric([], cumulative, total, timestamp=None)
        family.add_sample(f"{self._name}_created", {}, self._created)
        yield family

    def describe(self) -> Iterator[HistogramMetricFamily]:
        """The family's name, so the registry refuses a duplicate."""
        yield HistogramMetricFamily(self._name, self._doc)
