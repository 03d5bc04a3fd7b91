"""The per-request observer protocol: what a component that watches every carried-out
request (a drift detector, a sampler of hard examples) implements.

`EdgeService` calls `observe` once per answered or accepted item, on the event loop,
after the item's decision record is written; an item refused (invalid, budget rejected,
queue full) is not observed. The item holds its validated inputs (`routed.item.x`) for
statistics; an observer never logs or stores them, and keeps its own cost to
microseconds (heavier work goes to its own thread). An exception it raises is logged
(`observer_failed`) and the request is answered all the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from edge_node.routed import Routed


class RequestObserver(Protocol):
    """Sees each carried-out item: its inputs, local result, final decision, the cloud's
    answer (if any) and the request's latency so far in milliseconds."""

    def observe(self, routed: Routed, latency_ms: float) -> None:
        """Take note of one carried-out item. Must not block."""
