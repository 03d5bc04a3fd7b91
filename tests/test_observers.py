"""Per-request observers: a real node (real onnxruntime session, real stores) shows every
answered or accepted item to its observers, once, with the final decision; refused items
are not shown; an observer that raises never fails the request."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edge_node.node import Node
from edge_node.routed import Routed
from edge_node.settings import EdgeSettings
from router.edge_api import InferRequest
from router.errors import InputError
from tests.edge_fixtures import policy_head

INPUTS = [float(i % 17) for i in range(64)]


class Recorder:
    """Keeps (request id, route, reason, latency) of each observed item."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str, float]] = []

    def observe(self, routed: Routed, latency_ms: float) -> None:
        """Record one item."""
        d = routed.decision
        self.seen.append((routed.item.rid, d.route, d.reason, latency_ms))


class Broken:
    """An observer with a bug."""

    def observe(self, routed: Routed, latency_ms: float) -> None:
        """Fail."""
        raise ZeroDivisionError("observer bug")


def _node(tmp: Path, bundle: Path, placement: str) -> Node:
    policy = tmp / "policy.yaml"
    policy.write_text(
        policy_head()
        + f"tasks:\n  digits: {{edge_bundle: {bundle}, threshold: 0.5, placement: {placement}}}\n"
    )
    return Node(EdgeSettings(policy_path=policy, data_dir=tmp / "data", log_sample_rate=0.0))


@pytest.mark.parametrize("placement", ["edge_only", "cloud_first"])
def test_every_carried_out_item_is_observed_once_with_its_final_decision(
    demo_bundles_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, placement: str
) -> None:
    """A single request and the valid items of a batch are each observed once, with the
    decision carried out (answered at the edge, or at the edge after the cloud call
    failed); the invalid batch item is not observed."""
    monkeypatch.setenv("EDGEROUTE_TEST_TOKEN", "t")
    node = _node(tmp_path, (demo_bundles_dir / "edge" / "digits").resolve(), placement)
    recorder = Recorder()
    node.service.add_observer(recorder)

    async def scenario() -> list[str]:
        try:
            one = await node.service.infer(InferRequest(task="digits", inputs=INPUTS))
            batch = await node.service.run(
                [
                    InferRequest(task="digits", inputs=INPUTS, request_id="b-1"),
                    InferRequest(task="digits", inputs=[1.0], request_id="b-bad"),
                    InferRequest(task="digits", inputs=INPUTS, request_id="b-2"),
                ]
            )
            assert isinstance(batch[1][1], InputError)
            return [one.body["request_id"], "b-1", "b-2"]
        finally:
            await node.stop()

    rids = asyncio.run(scenario())
    assert [s[0] for s in recorder.seen] == rids
    routes = {(s[1], s[2]) for s in recorder.seen}
    if placement == "edge_only":
        assert routes == {("edge", "edge_only_task")}
    else:  # the cloud is unreachable: what follows the outcome is what is observed
        assert routes == {("edge", "cloud_error")}
    assert all(s[3] > 0 for s in recorder.seen)


def test_an_observer_that_raises_does_not_fail_the_request(
    demo_bundles_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a failing observer before a working one, the request is still answered and
    the next observer still sees it."""
    monkeypatch.setenv("EDGEROUTE_TEST_TOKEN", "t")
    node = _node(tmp_path, (demo_bundles_dir / "edge" / "digits").resolve(), "edge_only")
    recorder = Recorder()
    node.service.add_observer(Broken())
    node.service.add_observer(recorder)

    async def scenario() -> int:
        try:
            answer = await node.service.infer(InferRequest(task="digits", inputs=INPUTS))
            return answer.status
        finally:
            await node.stop()

    assert asyncio.run(scenario()) == 200
    assert len(recorder.seen) == 1
