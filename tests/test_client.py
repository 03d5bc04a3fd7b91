"""edgeroute.client against real edge node processes (and the real cloud behind a proxy)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgeroute.client import AsyncClient, Client, EdgeUnavailable, ItemError, RetryPolicy
from edgeroute.netproxy import ThreadedFaultProxy
from router.errors import InputError, NotFound, QueueFull, UnknownTask
from tests.edge_fixtures import EdgeNode, policy_text

pytestmark = pytest.mark.ray

LATER = """\
  later:
    edge_bundle: {bundle}
    cloud_task: digits
    bundle_task: digits
    threshold: 0.6
    placement: cloud_first
    when_offline: queue_only
"""

RUN = uuid.uuid4().hex[:8]  # ids unique per run: the session cloud dedups by id


def test_client_local_cloud_queued_and_errors(
    start_edge: Callable[..., EdgeNode],
    proxy: ThreadedFaultProxy,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
    edge_margins: np.ndarray,
) -> None:
    """Typed local and cloud answers; a queue-only request accepted while the cloud is
    down is fetched with wait_for_result once it is back; 4xx map to router.errors."""
    x, _ = digits_split
    bundle = demo_bundles_dir / "edge" / "digits"
    node = start_edge(
        policy_text(bundle, extra_tasks=LATER.format(bundle=bundle)),
        f"http://127.0.0.1:{proxy.port}",
    )
    sure, unsure = int(np.argmax(edge_margins)), int(np.argmin(edge_margins))
    with Client(node.url, timeout_s=10) as edge:
        a = edge.infer("digits", x[sure].tolist())
        assert (a.route, a.reason, a.status, a.final) == ("edge", "confident", "answered", True)
        b = edge.infer("digits", x[unsure].tolist(), request_id=f"c-1-{RUN}")
        assert (b.route, b.request_id) == ("cloud", f"c-1-{RUN}")
        many = edge.infer_many(
            [{"task": "digits", "inputs": x[sure].tolist()}, {"task": "nope", "inputs": [1]}]
        )
        assert many[0].status == "answered" and isinstance(many[1], ItemError)
        with pytest.raises(UnknownTask):
            edge.infer("nope", [1.0])
        with pytest.raises(InputError) as bad:
            edge.infer("digits", [1.0])
        assert bad.value.field == "inputs" and bad.value.status == 422
        with pytest.raises(NotFound):
            edge.result("never-queued")

        proxy.set_mode("down")
        for _ in range(3):  # open the breaker
            edge.infer("digits", x[unsure].tolist())
        q = edge.infer("later", x[sure].tolist(), request_id=f"c-q-{RUN}")
        assert (q.route, q.status) == ("queued", "accepted")
        assert edge.result(f"c-q-{RUN}").status == "pending"
        proxy.set_mode("pass")
        done = edge.wait_for_result(f"c-q-{RUN}", timeout_s=30)
        assert done.status == "done" and done.label is not None


def test_client_honours_retry_after_on_429(
    start_edge: Callable[..., EdgeNode],
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
    edge_margins: np.ndarray,
) -> None:
    """A full queue (reject) with the cloud down gives real 429s: the client retries
    max_retries times sleeping Retry-After (injected sleep), then raises QueueFull."""
    x, _ = digits_split
    bundle = demo_bundles_dir / "edge" / "digits"
    policy = policy_text(bundle, extra_tasks=LATER.format(bundle=bundle), max_items=1)
    node = start_edge(policy, "http://127.0.0.1:9")
    slept: list[float] = []
    retry = RetryPolicy(max_retries=2, backoff_initial_s=0.01, max_wait_s=5)
    with Client(node.url, timeout_s=10, retry=retry, sleep=slept.append) as edge:
        unsure = int(np.argmin(edge_margins))
        for _ in range(3):  # the unreachable cloud opens the breaker (and fills the queue)
            with contextlib.suppress(QueueFull):
                edge.infer("digits", x[unsure].tolist())
        slept.clear()
        with pytest.raises(QueueFull) as full:
            for i in range(3):
                edge.infer("later", x[i].tolist())
    assert full.value.retry_after_s >= 1
    assert len(slept) == 2 and all(s >= 1 for s in slept)

    async def go() -> None:
        seen: list[float] = []

        async def sleep(s: float) -> None:
            seen.append(s)

        async with AsyncClient(node.url, retry=retry, sleep=sleep) as aedge:
            sure = x[int(np.argmax(edge_margins))].tolist()
            assert (await aedge.infer("digits", sure)).status == "answered"
            with pytest.raises(QueueFull):
                await aedge.infer("later", x[5].tolist())
        assert len(seen) == 2
        async with AsyncClient("http://127.0.0.1:9", timeout_s=1) as dead:
            with pytest.raises(EdgeUnavailable):
                await dead.infer("digits", [0.0])

    asyncio.run(go())
