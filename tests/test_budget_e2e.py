"""Budgets that hold on a real edge node against the real Ray Serve cloud: concurrent
requests never overspend, the exhausted budget is named, and spending survives a restart."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from edge_node.observe.decision_log import read_decision_log
from edgeroute.netproxy import ThreadedFaultProxy
from tests.edge_fixtures import EdgeNode, policy_text

pytestmark = pytest.mark.ray

TASK_BUDGET = "    budgets:\n      - {period: hour, calls: 10}\n"

RUN = uuid.uuid4().hex[:8]  # ids unique per run: the session cloud dedups by id


async def _fire(url: str, bodies: list[dict[str, object]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return list(await asyncio.gather(*(client.post("/v1/infer", json=b) for b in bodies)))


def test_64_concurrent_requests_spend_exactly_a_budget_of_10_calls(
    start_edge: Callable[..., EdgeNode],
    proxy: ThreadedFaultProxy,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
    edge_margins: np.ndarray,
) -> None:
    """64 concurrent unsure requests against a per-task budget of 10 calls/hour: exactly 10
    are answered by the cloud, 54 locally with budget_exhausted naming the budget; the
    ledger says 10 and a restarted node still refuses an 11th call."""
    bundle = demo_bundles_dir / "edge" / "digits"
    text = policy_text(bundle, threshold=0.999, extra_tasks="") + TASK_BUDGET
    url = f"http://127.0.0.1:{proxy.port}"
    node = start_edge(text, url)
    x = digits_split[0]
    unsure = np.flatnonzero(edge_margins < 0.99)[:65]
    assert len(unsure) == 65
    bodies = [
        {"task": "digits", "inputs": x[i].tolist(), "request_id": f"budget-{RUN}-{i}"}
        for i in unsure[:64]
    ]
    responses = asyncio.run(_fire(node.url, bodies))
    assert all(r.status_code == 200 for r in responses)
    data = [r.json() for r in responses]
    routes = Counter((d["route"], d["reason"]) for d in data)
    assert routes == {("cloud", "below_threshold"): 10, ("edge", "budget_exhausted"): 54}
    assert all(d["model_version"].startswith("digits-cloud") for d in data if d["route"] == "cloud")
    assert {d.get("budget") for d in data if d["reason"] == "budget_exhausted"} == {
        "task/digits/hour/calls"
    }
    status = node.status()
    assert status["cloud"]["calls"] == 10  # type: ignore[index]
    assert status["budgets"]["task/digits/hour/calls"]["used"] == 10  # type: ignore[index]

    # Restart on the same data dir: the ledger survives, the 11th call is still refused.
    node.proc.terminate()
    node.proc.wait(30)
    records = list(read_decision_log(node.data_dir / "decisions"))
    assert len(records) == 64
    for rec in records:  # privacy-safe and complete: scores, top-k, decision, cloud answer
        assert set(rec.scores) == {"max_prob", "margin", "entropy"} and rec.edge_candidates
        if rec.route == "cloud":
            assert rec.cloud_label and rec.cloud_candidates and rec.budget is None
        else:
            assert rec.cloud_label is None and rec.budget == "task/digits/hour/calls"
    assert b"inputs" not in (node.data_dir / "decisions" / "decisions.jsonl").read_bytes()
    again = start_edge(text, url, data_dir=node.data_dir, name="edge2")
    r = again.infer({"task": "digits", "inputs": x[unsure[64]].tolist()}).json()
    assert (r["route"], r["reason"], r["budget"]) == (
        "edge",
        "budget_exhausted",
        "task/digits/hour/calls",
    )
    assert again.status()["budgets"]["task/digits/hour/calls"]["used"] == 10  # type: ignore[index]


def test_reject_action_returns_429_naming_the_budget(
    start_edge: Callable[..., EdgeNode],
    proxy: ThreadedFaultProxy,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
    edge_margins: np.ndarray,
) -> None:
    """on_budget_exhausted=reject with a zero node budget: 429, nothing sent to the cloud."""
    bundle = demo_bundles_dir / "edge" / "digits"
    cost = "  budgets: [{period: day, money: 0}]\n  on_budget_exhausted: reject"
    node = start_edge(
        policy_text(bundle, threshold=0.999, cost=cost), f"http://127.0.0.1:{proxy.port}"
    )
    i = int(np.argmin(edge_margins))
    r = node.infer({"task": "digits", "inputs": digits_split[0][i].tolist()})
    assert r.status_code == 429, r.text
    assert node.status()["cloud"]["calls"] == 0  # type: ignore[index]
