"""The batch form of POST /v1/infer against a real edge node process and the real cloud."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgeroute.netproxy import ThreadedFaultProxy
from tests.edge_fixtures import EdgeNode, policy_text

pytestmark = pytest.mark.ray

P = f"batch-{uuid.uuid4().hex[:8]}-"  # ids unique per run: the session cloud dedups by id


def test_batch_answers_in_order_with_per_item_errors(
    start_edge: Callable[..., EdgeNode],
    proxy: ThreadedFaultProxy,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
    edge_margins: np.ndarray,
) -> None:
    """Items come back in order; bad items are 422 entries inside a 200; the unsure items
    escalate together in one cloud call; the OpenAPI schema documents the batch body."""
    x, _ = digits_split
    node = start_edge(
        policy_text(demo_bundles_dir / "edge" / "digits"), f"http://127.0.0.1:{proxy.port}"
    )
    order = np.argsort(edge_margins)
    unsure, sure = [int(i) for i in order[:2]], [int(i) for i in order[-2:]]
    items: list[dict[str, object]] = [
        {"task": "digits", "inputs": x[sure[0]].tolist(), "request_id": P + "b-0"},
        {"task": "digits", "inputs": x[unsure[0]].tolist(), "request_id": P + "b-1"},
        {"task": "nope", "inputs": [1.0], "request_id": P + "b-2"},
        {"task": "digits", "inputs": [1.0, 2.0], "request_id": P + "b-3"},
        {"task": "digits", "inputs": x[unsure[1]].tolist(), "request_id": P + "b-4"},
        {"task": "digits", "inputs": x[sure[1]].tolist(), "request_id": P + "b-0"},
        {"task": "digits", "inputs": x[sure[1]].tolist(), "surprise": 1},
    ]
    calls_before = node.status()["cloud"]["calls"]  # type: ignore[index]
    r = httpx.post(f"{node.url}/v1/infer", json={"items": items}, timeout=10)
    assert r.status_code == 200
    res = r.json()["results"]
    assert [e.get("request_id") for e in res[:6]] == [
        P + i for i in ("b-0", "b-1", "b-2", "b-3", "b-4", "b-0")
    ]
    assert (res[0]["route"], res[0]["reason"]) == ("edge", "confident")
    assert (res[1]["route"], res[4]["route"]) == ("cloud", "cloud")
    assert res[1]["model_version"].startswith("digits-cloud")
    assert res[2]["error"]["code"] == "unknown_task" and res[2]["http_status"] == 422
    assert res[3]["error"]["field"] == "inputs" and res[3]["status"] == "error"
    assert res[5]["error"]["code"] == "duplicate_request_id"
    assert res[6]["error"]["code"] == "unknown_field"
    assert res[6]["error"]["field"] == "items.6.surprise"
    assert node.status()["cloud"]["calls"] == calls_before + 1  # type: ignore[index]

    schema = httpx.get(f"{node.url}/openapi.json", timeout=5).json()
    body = schema["paths"]["/v1/infer"]["post"]["requestBody"]["content"]["application/json"]
    refs = {s["$ref"].rsplit("/", 1)[1] for s in body["schema"]["anyOf"]}
    assert refs == {"InferRequest", "InferBatchRequest"}
    assert "items" in schema["components"]["schemas"]["InferBatchRequest"]["properties"]


def test_batch_limits_and_envelope_errors(
    start_edge: Callable[..., EdgeNode],
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
) -> None:
    """More items than the task's max_batch_items, an empty or non-list `items`, and
    extra envelope keys fail the whole request with 422; within the limit the batch runs."""
    x, _ = digits_split
    bundle = demo_bundles_dir / "edge" / "digits"
    extra = (
        f"  small:\n    edge_bundle: {bundle}\n    bundle_task: digits\n    threshold: 0.5\n"
        "    max_batch_items: 3\n"
    )
    node = start_edge(policy_text(bundle, extra_tasks=extra), "http://127.0.0.1:9")
    item = {"task": "small", "inputs": x[0].tolist()}
    url = f"{node.url}/v1/infer"
    r = httpx.post(url, json={"items": [item] * 4}, timeout=10)
    assert r.status_code == 422 and r.json()["error"]["code"] == "batch_too_large"
    assert httpx.post(url, json={"items": [item] * 3}, timeout=10).status_code == 200
    for bad in ({"items": []}, {"items": {"a": 1}}, {"items": [item], "task": "small"}):
        r = httpx.post(url, json=bad, timeout=10)
        assert r.status_code == 422, bad
        assert set(r.json()["error"]) == {"code", "message", "field"}
