"""One id, one request: a request_id reused for other inputs is refused with 409 on the
single and batch paths, online and offline; the same request again is idempotent (real
node, real Ray Serve cloud through a fault proxy)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edgeroute.netproxy import ThreadedFaultProxy
from tests.edge_fixtures import EdgeNode
from tests.offline_support import offline_policy

pytestmark = pytest.mark.ray


def _single(node: EdgeNode, rid: str, inputs: list[float]) -> httpx.Response:
    return node.infer({"task": "later", "inputs": inputs, "request_id": rid})


def _batched(node: EdgeNode, rid: str, inputs: list[float]) -> httpx.Response:
    """One batch call holding the request; the response carries that item's status."""
    item = {"task": "later", "inputs": inputs, "request_id": rid}
    r = httpx.post(f"{node.url}/v1/infer", json={"items": [item]}, timeout=10)
    assert r.status_code == 200, r.text
    entry: dict[str, Any] = r.json()["results"][0]
    status = int(entry.get("http_status", 200))
    return httpx.Response(status, json=entry if status == 200 else {"error": entry["error"]})


@pytest.mark.parametrize("send", [_single, _batched], ids=["single", "batch"])
@pytest.mark.parametrize("online", [False, True], ids=["offline", "online"])
def test_reused_request_id_with_other_inputs_is_refused(
    start_edge: Callable[..., EdgeNode],
    proxy: ThreadedFaultProxy,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
    send: Callable[[EdgeNode, str, list[float]], httpx.Response],
    online: bool,
) -> None:
    """Same id + same inputs answers again (same label); same id + other inputs is 409
    `request_id_conflict` naming request_id, and the id still resolves to the first."""
    x, _ = digits_split
    first, other = x[0].tolist(), x[1].tolist()
    rid = f"reuse-{uuid.uuid4().hex[:10]}"
    proxy.set_mode("pass" if online else "down")
    node = start_edge(
        offline_policy(demo_bundles_dir / "edge" / "digits"), f"http://127.0.0.1:{proxy.port}"
    )

    a = send(node, rid, first)
    assert a.status_code == 200, a.text
    assert a.json()["final"] is online
    again = send(node, rid, first)
    assert again.status_code == 200, again.text
    assert again.json()["label"] == a.json()["label"]

    conflict = send(node, rid, other)
    assert conflict.status_code == 409, conflict.text
    error = conflict.json()["error"]
    assert (error["code"], error["field"]) == ("request_id_conflict", "request_id")
    if not online:
        assert node.status()["queue"]["depth"] == 1  # type: ignore[index]
        stored = httpx.get(f"{node.url}/v1/results/{rid}", timeout=5).json()
        assert stored["status"] == "pending"
        assert stored["provisional"]["label"] == a.json()["label"]


def test_queued_id_cannot_be_taken_over_online(
    start_edge: Callable[..., EdgeNode],
    proxy: ThreadedFaultProxy,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
) -> None:
    """An id queued offline, reused online for other inputs while still queued, is refused
    with 409 before anything is escalated; the id still names the queued request."""
    x, _ = digits_split
    rid = f"taken-{uuid.uuid4().hex[:10]}"
    proxy.set_mode("down")
    node = start_edge(
        offline_policy(
            demo_bundles_dir / "edge" / "digits", sync="batch_size: 32\n  interval_ms: 60000"
        ),
        f"http://127.0.0.1:{proxy.port}",
    )
    first = _single(node, rid, x[0].tolist())
    assert first.status_code == 200 and first.json()["final"] is False
    proxy.set_mode("pass")
    taken = _single(node, rid, x[1].tolist())
    assert taken.status_code == 409, taken.text
    assert taken.json()["error"]["code"] == "request_id_conflict"
    calls = node.status()["cloud"]["calls"]  # type: ignore[index]
    assert calls == 0  # refused before any cloud call
    stored = httpx.get(f"{node.url}/v1/results/{rid}", timeout=5).json()
    assert stored["status"] == "pending"
    assert stored["provisional"]["label"] == first.json()["label"]
