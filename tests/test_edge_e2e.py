"""End to end: real edge node processes, the real Ray Serve re-ranker, real HTTP on loopback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from edge_node.observe.decision_log import DecisionLogError, read_decision_log
from edgeroute import processes
from edgeroute.netproxy import ThreadedFaultProxy
from tests.edge_fixtures import CLOUD_NODE, CLOUD_TOKEN, EdgeNode, policy_text
from tests.waiting import holds_within, wait_until

pytestmark = pytest.mark.ray

EXTRA_TASKS = """\
  digits_private:
    edge_bundle: {bundle}
    bundle_task: digits
    threshold: 0.99
    placement: edge_only
  digits_later:
    edge_bundle: {bundle}
    cloud_task: digits
    bundle_task: digits
    threshold: 0.6
    placement: cloud_first
    when_offline: queue_only
"""


def _policy(bundles: Path, **kw: object) -> str:
    bundle = bundles / "edge" / "digits"
    return policy_text(bundle, extra_tasks=EXTRA_TASKS.format(bundle=bundle), **kw)  # type: ignore[arg-type]


def _body(x: np.ndarray, i: int, task: str = "digits", rid: str | None = None) -> dict[str, object]:
    body: dict[str, object] = {"task": task, "inputs": x[i].tolist()}
    if rid is not None:
        body["request_id"] = rid
    return body


def _results(node: EdgeNode, ids: list[str]) -> list[dict[str, object]]:
    return [httpx.get(f"{node.url}/v1/results/{rid}", timeout=5).json() for rid in ids]


def test_each_route_and_reason(
    start_edge: Callable[..., EdgeNode],
    proxy: ThreadedFaultProxy,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
    edge_margins: np.ndarray,
) -> None:
    """Confident -> edge/confident; unsure -> cloud/below_threshold re-ranked by the cloud
    model; edge_only task -> edge/edge_only_task without any cloud call."""
    x, _ = digits_split
    node = start_edge(_policy(demo_bundles_dir), f"http://127.0.0.1:{proxy.port}")
    sure, unsure = int(np.argmax(edge_margins)), int(np.argmin(edge_margins))

    r = node.infer(_body(x, sure)).json()
    assert (r["route"], r["reason"], r["final"]) == ("edge", "confident", True)
    assert r["model_version"].startswith("digits-edge")

    r = node.infer(_body(x, unsure)).json()
    assert (r["route"], r["reason"], r["final"]) == ("cloud", "below_threshold", True)
    assert r["model_version"].startswith("digits-cloud")
    assert len(r["candidates"]) <= 3 and r["label"] == r["candidates"][0]["label"]

    calls_before = node.status()["cloud"]["calls"]  # type: ignore[index]
    r = node.infer(_body(x, unsure, task="digits_private")).json()
    assert (r["route"], r["reason"]) == ("edge", "edge_only_task")
    assert node.status()["cloud"]["calls"] == calls_before  # type: ignore[index]


def test_escalation_is_a_first_send_only_when_the_node_made_the_id(
    start_edge: Callable[..., EdgeNode],
    cloud_url: str,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
    edge_margins: np.ndarray,
) -> None:
    """An escalated request without a request_id reaches the cloud as a first send (no
    store claim); one with the client's own id (maybe a retry) is claimed as before."""
    x, _ = digits_split
    node = start_edge(_policy(demo_bundles_dir), cloud_url)
    unsure = int(np.argmin(edge_margins))
    auth = {"X-Edgeroute-Node": CLOUD_NODE, "Authorization": f"Bearer {CLOUD_TOKEN}"}

    def first_sends() -> int:
        stats = httpx.get(f"{cloud_url}/v1/stats", headers=auth, timeout=10).json()
        return int(stats["replica"]["first_send_items"])

    before = first_sends()
    assert node.infer(_body(x, unsure)).json()["route"] == "cloud"
    assert first_sends() == before + 1
    r = node.infer(_body(x, unsure, rid="client-own-id-1")).json()
    assert (r["route"], r["request_id"]) == ("cloud", "client-own-id-1")
    assert first_sends() == before + 1


def test_cloud_cut_queues_then_syncs(
    start_edge: Callable[..., EdgeNode],
    proxy: ThreadedFaultProxy,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
    edge_margins: np.ndarray,
) -> None:
    """With the link cut, unsure requests are answered provisionally and queued; when it is
    restored the queue drains, every queued id has a final cloud answer, and the decision
    log gets a `sync` record with that answer for each (for the calibration tools)."""
    x, _ = digits_split
    # The breaker stays open longer than the 30 requests take, even on a loaded machine.
    policy = _policy(demo_bundles_dir).replace(
        "open_ms: 300, open_max_ms: 1000", "open_ms: 3000, open_max_ms: 3000"
    )
    assert "open_ms: 3000" in policy
    node = start_edge(policy, f"http://127.0.0.1:{proxy.port}")
    unsure = [int(i) for i in np.argsort(edge_margins)[:30]]
    proxy.set_mode("down")
    answers = [node.infer(_body(x, i, rid=f"cut-{i}")).json() for i in unsure]
    assert all(a["final"] is False for a in answers)
    assert {a["route"] for a in answers} <= {"queued", "edge"}
    assert (
        sum(a["route"] == "queued" and a["reason"] == "cloud_unreachable" for a in answers) >= 25
    )  # the breaker opens after 2 failures
    ids = [a["request_id"] for a in answers]
    assert all(r["status"] == "pending" for r in _results(node, ids))
    assert node.status()["connectivity"]["state"] == "offline"  # type: ignore[index]

    proxy.set_mode("pass")
    wait_until(
        lambda: node.status()["queue"]["depth"] == 0,  # type: ignore[index]
        30,
        0.1,
        what="the queue to drain once the cloud is back",
    )
    finals = _results(node, ids)
    assert all(r["status"] == "done" for r in finals), finals
    assert all(str(r["model_version"]).startswith("digits-cloud") for r in finals)
    queued = {a["request_id"] for a in answers if a["route"] == "queued"}

    def synced() -> dict[str, str | None]:
        try:  # the node may be mid-write of a line
            recs = list(read_decision_log(node.data_dir / "decisions"))
        except DecisionLogError:
            return {}
        return {r.request_id: r.cloud_label for r in recs if r.kind == "sync"}

    assert holds_within(lambda: set(synced()) >= queued, 10, 0.1), (
        f"no sync decision record for {sorted(queued - set(synced()))}; have {synced()}"
    )
    labels = {r["request_id"]: r["label"] for r in finals}
    assert all(synced()[rid] == labels[rid] for rid in queued)


def test_queue_only_task_answers_later(
    start_edge: Callable[..., EdgeNode],
    proxy: ThreadedFaultProxy,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
) -> None:
    """A queue_only task answers 202 while offline, and its result can be fetched later."""
    x, _ = digits_split
    node = start_edge(_policy(demo_bundles_dir), f"http://127.0.0.1:{proxy.port}")
    proxy.set_mode("down")
    for i in range(3):  # open the breaker
        node.infer(_body(x, i, task="digits_later"))
    resp = node.infer(_body(x, 10, task="digits_later", rid="later-10"))
    assert resp.status_code == 202
    body = resp.json()
    assert (body["route"], body["status"], body["label"]) == ("queued", "accepted", None)
    proxy.set_mode("pass")
    wait_until(
        lambda: _results(node, ["later-10"])[0]["status"] == "done",
        30,
        0.1,
        what="the queued later-10 result to be done",
    )


def test_restart_with_items_queued(
    start_edge: Callable[..., EdgeNode],
    proxy: ThreadedFaultProxy,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
    edge_margins: np.ndarray,
    tmp_path: Path,
) -> None:
    """Items queued before a kill -9 are synced after the node restarts on the same data dir."""
    x, _ = digits_split
    data = tmp_path / "restart-data"
    policy = _policy(demo_bundles_dir)
    node = start_edge(policy, f"http://127.0.0.1:{proxy.port}", data_dir=data, name="first")
    proxy.set_mode("down")
    unsure = [int(i) for i in np.argsort(edge_margins)[:20]]
    ids = [node.infer(_body(x, i, rid=f"rs-{i}")).json()["request_id"] for i in unsure]
    assert node.status()["queue"]["depth"] == len(ids)  # type: ignore[index]
    processes.kill(node.proc)  # kill -9: no graceful shutdown

    proxy.set_mode("pass")
    again = start_edge(policy, f"http://127.0.0.1:{proxy.port}", data_dir=data, name="second")
    wait_until(
        lambda: again.status()["queue"]["depth"] == 0,  # type: ignore[index]
        30,
        0.1,
        what="the restarted node to drain its queue",
    )
    assert all(r["status"] == "done" for r in _results(again, ids))


def test_bad_requests_get_clear_4xx(
    start_edge: Callable[..., EdgeNode], proxy: ThreadedFaultProxy, demo_bundles_dir: Path
) -> None:
    """Unknown task, wrong length, non-numbers, oversize, bad JSON, unknown fields and unknown
    ids each get a 4xx JSON error naming the field, never a 500."""
    node = start_edge(_policy(demo_bundles_dir), f"http://127.0.0.1:{proxy.port}")
    ok = [0.0] * 64
    cases: list[tuple[object, int, str, str | None]] = [
        ({"task": "nope", "inputs": ok}, 422, "unknown_task", "task"),
        ({"task": "digits", "inputs": [1.0] * 63}, 422, "invalid_input", "inputs"),
        ({"task": "digits", "inputs": ["a"] * 64}, 422, "invalid_input", "inputs[0]"),
        ({"task": "digits", "inputs": [99.0] * 64}, 422, "invalid_input", "inputs[0]"),
        ({"task": "digits", "inputs": ok, "extra": 1}, 422, "unknown_field", "extra"),
        ({"task": "digits"}, 422, "missing_field", "inputs"),
        (
            {"task": "digits", "inputs": ok, "request_id": "bad id!"},
            422,
            "invalid_input",
            "request_id",
        ),
    ]
    for body, status, code, field in cases:
        resp = httpx.post(f"{node.url}/v1/infer", json=body, timeout=5)
        assert resp.status_code == status, (body, resp.text)
        err = resp.json()["error"]
        assert (err["code"], err["field"]) == (code, field), err
        assert err["message"]

    resp = httpx.post(
        f"{node.url}/v1/infer",
        content=b"{not json",
        timeout=5,
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "malformed_json"
    resp = httpx.post(
        f"{node.url}/v1/infer",
        content=b"[" + b"1," * 600_000 + b"1]",
        timeout=5,
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "body_too_large"
    resp = httpx.get(f"{node.url}/v1/results/never-seen", timeout=5)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{node.url}/healthz", timeout=5).status_code == 200
