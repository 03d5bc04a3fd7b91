"""The one escalation step: the live path and the sync worker charge the budget and move the
breaker the same way for the same cloud outcome (real nodes built by `Node`, real stores,
the cloud answered through an httpx mock transport)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from edge_node.node import Node
from edge_node.settings import EdgeSettings
from edge_node.storage.queued_item import QueuedItem
from router.edge_api import InferRequest
from tests.edge_fixtures import policy_head
from tests.rerank_fakes import results_body

NOW_INPUTS = [float(i % 17) for i in range(64)]


def _cloud(outcome: str) -> httpx.MockTransport:
    """A cloud that answers every call with `outcome`: a fresh or a cached answer, a 401
    refusal, or 503 (overloaded)."""

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/healthz":
            return httpx.Response(200, json={"status": "ok"})
        if outcome == "rejected":
            return httpx.Response(401, json={"error": {"code": "unauthorized", "message": "no"}})
        if outcome == "unavailable":
            return httpx.Response(503)
        body = results_body(orjson.loads(req.content)["items"], label="7")
        for r in body["results"]:
            r["cached"] = outcome == "cached"
        return httpx.Response(200, json=body)

    return httpx.MockTransport(handler)


def _node(tmp: Path, bundle: Path, outcome: str, name: str) -> Node:
    """A node whose task always escalates (cloud_first), with a daily call budget."""
    policy = tmp / f"{name}.yaml"
    policy.write_text(
        policy_head(cost="price_per_call: 0.01\n  daily_calls: 100")
        + f"tasks:\n  digits: {{edge_bundle: {bundle}, threshold: 0.5, placement: cloud_first,"
        " deadline_ms: 2000}\n"
    )
    settings = EdgeSettings(policy_path=policy, data_dir=tmp / name, log_sample_rate=0.0)
    return Node(settings, transport=_cloud(outcome))


async def _live(node: Node) -> dict[str, Any]:
    """One request through the live path; the answer's route and reason."""
    answer = await node.service.infer(InferRequest(task="digits", inputs=NOW_INPUTS))
    return {"route": answer.body["route"], "reason": answer.body["reason"]}


async def _synced(node: Node) -> dict[str, Any]:
    """One queued item through a sync round; the round's report."""
    node.queue.put(
        QueuedItem(
            request_id="q-1",
            task="digits",
            cloud_task="digits",
            inputs=NOW_INPUTS,
            candidates=["7", "1"],
            edge_label="7",
            edge_score=0.5,
            edge_candidates=[("7", 0.5), ("1", 0.3)],
            model_version="e1",
            enqueued_at=time.time(),
            reason="cloud_unreachable",
        )
    )
    report = await node.sync.run_once()
    return {"sent": report.sent, "done": report.done, "failed": report.failed}


def _effect(node: Node) -> tuple[int, int, str]:
    """(calls charged today, consecutive breaker failures, breaker state)."""
    snap = node.monitor.snapshot()
    return node.budget.snapshot().calls, snap.consecutive_failures, snap.breaker


@pytest.mark.parametrize(
    ("outcome", "charged", "failures"),
    [("fresh", 1, 0), ("cached", 0, 0), ("rejected", 0, 0), ("unavailable", 0, 2)],
)
def test_live_and_sync_settle_the_same_outcome_the_same_way(
    demo_bundles_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    outcome: str,
    charged: int,
    failures: int,
) -> None:
    """For each cloud outcome, the live path and the sync worker leave the same charge (a
    fresh answer costs one call; a cached answer, a refusal and an outage cost none) and
    the same breaker effect (one earlier failure is cleared by an answer or a refusal,
    counted up by an outage)."""
    monkeypatch.setenv("EDGEROUTE_TEST_TOKEN", "t")
    bundle = (demo_bundles_dir / "edge" / "digits").resolve()

    async def run(path: str) -> tuple[tuple[int, int, str], dict[str, Any]]:
        node = _node(tmp_path, bundle, outcome, path)
        try:
            node.monitor.record_failure()  # one failure before: what does the outcome do?
            seen = await (_live(node) if path == "live" else _synced(node))
            return _effect(node), seen
        finally:
            await node.stop()

    live, live_seen = asyncio.run(run("live"))
    sync, sync_seen = asyncio.run(run("sync"))
    assert live[:2] == sync[:2] == (charged, failures), (live, sync)
    assert live[2] == sync[2]
    if outcome in ("fresh", "cached"):
        assert live_seen["route"] == "cloud" and sync_seen["done"] == 1
    else:
        assert live_seen["reason"] in ("cloud_error", "cloud_timeout")
        assert sync_seen["done"] == 0 and sync_seen["sent"] == 1
