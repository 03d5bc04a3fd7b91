"""Privacy before escalation: `send: nothing` / `edge_only` tasks never reach the cloud,
`send: candidates_only` sends no inputs, and no log line or decision record holds inputs.

Real edge node processes, the session's Ray Serve cloud behind a fault proxy.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgeroute.netproxy import ThreadedFaultProxy
from router.wire import NODE_HEADER
from tests.edge_fixtures import CLOUD_NODE, CLOUD_TOKEN, EdgeNode, policy_text
from tests.waiting import wait_until

pytestmark = pytest.mark.ray

PRIVATE_TASKS = """\
  digits_private:
    edge_bundle: {bundle}
    bundle_task: digits
    threshold: 0.99
    placement: edge_only
  digits_secret:
    edge_bundle: {bundle}
    cloud_task: digits
    bundle_task: digits
    threshold: 0.99
    placement: cloud_first
    when_offline: queue_only
    send: nothing
  digits_cands:
    edge_bundle: {bundle}
    cloud_task: digits
    bundle_task: digits
    threshold: 0.99
    send: candidates_only
"""


def _policy(bundles: Path) -> str:
    bundle = bundles / "edge" / "digits"
    return policy_text(bundle, extra_tasks=PRIVATE_TASKS.format(bundle=bundle))


def _body(row: np.ndarray, task: str, rid: str) -> dict[str, object]:
    return {"task": task, "inputs": row.tolist(), "request_id": rid}


def _computed(cloud_url: str, ids: list[str]) -> dict[str, int]:
    """How often the session cloud computed each id for the test node (0: never)."""
    resp = httpx.post(
        f"{cloud_url}/v1/stats/computed",
        json={"request_ids": ids},
        headers={NODE_HEADER: CLOUD_NODE, "Authorization": f"Bearer {CLOUD_TOKEN}"},
        timeout=10,
    )
    resp.raise_for_status()
    counts: dict[str, int] = resp.json()["computed"]
    return counts


def _depth(node: EdgeNode) -> int:
    return int(node.status()["queue"]["depth"])  # type: ignore[index]


def _calls(node: EdgeNode) -> int:
    return int(node.status()["cloud"]["calls"])  # type: ignore[index]


def test_edge_only_and_send_nothing_never_reach_the_cloud(
    start_edge: Callable[..., EdgeNode],
    proxy: ThreadedFaultProxy,
    cloud_url: str,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
    edge_margins: np.ndarray,
) -> None:
    """edge_only and send: nothing tasks answer locally and finally, online and offline,
    queue nothing, and the cloud never computes them (a hybrid control does reach it)."""
    x, _ = digits_split
    node = start_edge(_policy(demo_bundles_dir), f"http://127.0.0.1:{proxy.port}")
    unsure = [int(i) for i in np.argsort(edge_margins)[:5]]
    expected = {"digits_private": "edge_only_task", "digits_secret": "privacy_edge_only"}

    control = node.infer(_body(x[unsure[0]], "digits", "ctl-online")).json()
    assert control["route"] == "cloud"  # the control does reach the cloud
    calls = _calls(node)
    ids: list[str] = []
    for phase in ("online", "offline"):
        if phase == "offline":
            proxy.set_mode("down")
        for task, reason in expected.items():
            for i in unsure:
                rid = f"{task}-{phase}-{i}"
                ids.append(rid)
                resp = node.infer(_body(x[i], task, rid))
                assert resp.status_code == 200, resp.text
                r = resp.json()
                assert (r["route"], r["reason"], r["final"]) == ("edge", reason, True)
                assert r["model_version"].startswith("digits-edge")
        assert _calls(node) == calls
        assert _depth(node) == 0
    proxy.set_mode("pass")
    wait_until(
        lambda: node.status()["connectivity"]["state"] == "online",  # type: ignore[index]
        30,
        0.1,
        what="the node to see the cloud online again",
    )
    # Several sync drains (interval_ms 50) must have run, and sent nothing.
    drains = int(node.status()["sync"]["drains"])  # type: ignore[index]
    wait_until(
        lambda: node.status()["sync"]["drains"] >= drains + 3,  # type: ignore[index,operator]
        30,
        0.1,
        what="three more sync drains",
    )
    counts = _computed(cloud_url, [*ids, "ctl-online"])
    assert counts["ctl-online"] == 1
    assert {rid: n for rid, n in counts.items() if rid != "ctl-online" and n} == {}
    assert _calls(node) == calls and _depth(node) == 0
    for rid in ids[:2]:
        assert httpx.get(f"{node.url}/v1/results/{rid}", timeout=5).status_code == 404


def test_candidates_only_sends_no_inputs_and_falls_back(
    start_edge: Callable[..., EdgeNode],
    proxy: ThreadedFaultProxy,
    cloud_url: str,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
    edge_margins: np.ndarray,
) -> None:
    """send: candidates_only: the cloud (which needs inputs) refuses with inputs_required;
    online the edge answers locally with reason cloud_needs_inputs and queues nothing;
    an item queued offline is dead-lettered on its first sync, never retried forever."""
    x, _ = digits_split
    node = start_edge(_policy(demo_bundles_dir), f"http://127.0.0.1:{proxy.port}")
    unsure = [int(i) for i in np.argsort(edge_margins)[:3]]

    for i in unsure:
        r = node.infer(_body(x[i], "digits_cands", f"cands-online-{i}")).json()
        assert (r["route"], r["reason"], r["final"]) == ("edge", "cloud_needs_inputs", True)
        assert r["model_version"].startswith("digits-edge")
    assert _depth(node) == 0
    assert node.infer(_body(x[unsure[0]], "digits", "cands-ctl")).json()["route"] == "cloud"

    proxy.set_mode("down")
    queued = []
    for i in unsure:
        r = node.infer(_body(x[i], "digits_cands", f"cands-offline-{i}")).json()
        if r["route"] == "queued":
            queued.append(r["request_id"])
    assert queued  # once the breaker is open, items are queued (without inputs)
    proxy.set_mode("pass")
    wait_until(lambda: _depth(node) == 0, 30, 0.1, what="the sync queue to drain")
    for rid in queued:
        res = httpx.get(f"{node.url}/v1/results/{rid}", timeout=5).json()
        assert res["status"] == "failed", res
        assert "inputs_required" in str(res), res
    counts = _computed(cloud_url, [*queued, "cands-ctl"])
    assert counts.pop("cands-ctl") == 1
    assert set(counts.values()) == {0}


DISTINCT = (13.37, 7.123, 11.111)
NEEDLES = ("13.37", "13.369", "7.123", "7.122", "11.111", "11.110")


def _marked(row: np.ndarray, k: int) -> np.ndarray:
    out = row.astype(np.float64).copy()
    for j, pos in enumerate(range(k % 5, out.size, 7)):
        out[pos] = DISTINCT[j % len(DISTINCT)]
    return out


def test_no_log_line_or_decision_record_holds_inputs(
    start_edge: Callable[..., EdgeNode],
    proxy: ThreadedFaultProxy,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
    edge_margins: np.ndarray,
) -> None:
    """With debug logs and every request logged, inputs holding distinctive values go
    through every route (edge, cloud, queued, synced, batch, invalid) and none of the
    values appears in any log line of the node or in its decision log."""
    x, _ = digits_split
    node = start_edge(
        _policy(demo_bundles_dir),
        f"http://127.0.0.1:{proxy.port}",
        log_args=("--log-level", "debug", "--log-sample-rate", "1.0"),
    )
    sure = [int(i) for i in np.argsort(edge_margins)[-3:]]
    unsure = [int(i) for i in np.argsort(edge_margins)[:6]]
    rows = {i: _marked(x[i], k) for k, i in enumerate(sure + unsure)}
    sent = 0
    for task in ("digits", "digits_private", "digits_secret", "digits_cands"):
        for i in sure + unsure[:3]:
            assert node.infer(_body(rows[i], task, f"p-{task}-{i}")).status_code == 200
            sent += 1
    batch = {"items": [_body(rows[i], "digits", f"pb-{i}") for i in unsure[:3]]}
    assert httpx.post(f"{node.url}/v1/infer", json=batch, timeout=10).status_code == 200
    bad = {"task": "digits", "inputs": [13.37, 7.123], "request_id": "p-bad"}
    assert node.infer(bad).status_code == 422
    out_of_range = {"task": "digits", "inputs": [*rows[sure[0]].tolist()[:-1], 99.123]}
    assert node.infer(out_of_range).status_code == 422
    proxy.set_mode("down")
    for i in unsure[3:]:
        node.infer(_body(rows[i], "digits", f"p-off-{i}"))
    proxy.set_mode("pass")
    wait_until(lambda: _depth(node) == 0, 30, 0.1, what="the sync queue to drain")
    node.proc.terminate()  # graceful stop flushes the decision log
    node.proc.wait(timeout=20)

    log_text = node.log_path.read_text(errors="replace")
    assert "request" in log_text and "p-digits-" in log_text  # per-request lines were written
    decisions = sorted((node.data_dir / "decisions").glob("decisions.jsonl*"))
    assert decisions
    decision_text = "".join(p.read_text(errors="replace") for p in decisions)
    assert decision_text.count("p-digits-") >= len(sure) + 3
    for name, text in (("log", log_text), ("decision log", decision_text)):
        found = [n for n in NEEDLES if n in text]
        assert not found, f"{name} contains input values {found}"
        assert "99.123" not in text, f"{name} echoes a rejected input"
