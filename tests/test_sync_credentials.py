"""A revoked node token pauses the sync instead of dead-lettering the backlog (real node,
real Ray Serve cloud, the cloud's tokens file edited while both run)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from cloud_service.settings import CloudServiceSettings
from edgeroute.netproxy import ThreadedFaultProxy
from tests.edge_fixtures import CLOUD_NODE, EdgeNode
from tests.offline_support import fetch_results, offline_policy, send_all, wait_until

pytestmark = pytest.mark.ray

NODE = "node-b"  # a node of the session cloud's tokens file other than the shared one
TOKEN = "token-b"
N_ITEMS = 10
MAX_ATTEMPTS = 3


@pytest.fixture
def tokens_file(cloud_settings: CloudServiceSettings) -> Iterator[Path]:
    """The session cloud's tokens file, restored after the test whatever it did."""
    path = cloud_settings.tokens_file
    assert path is not None
    original = path.read_text(encoding="utf-8")
    assert f"{NODE} {TOKEN}" in original
    try:
        yield path
    finally:
        path.write_text(original, encoding="utf-8")


def _connectivity(node: EdgeNode) -> dict[str, object]:
    conn: dict[str, object] = node.status()["connectivity"]  # type: ignore[assignment]
    return conn


def _drains(node: EdgeNode) -> int:
    return int(node.status()["sync"]["drains"])  # type: ignore[index]


def test_revoked_token_pauses_sync_and_the_backlog_drains_once_restored(
    start_edge: Callable[..., EdgeNode],
    proxy: ThreadedFaultProxy,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
    tokens_file: Path,
) -> None:
    """Items queued offline survive more than max_attempts rounds refused with 401 (status
    and metrics say the credentials are rejected) and every one ends done once the token
    is back."""
    x, _ = digits_split
    run = uuid.uuid4().hex[:8]
    ids = [f"cred-{run}-{i}" for i in range(N_ITEMS)]
    bodies = [
        {"task": "later", "inputs": x[i].tolist(), "request_id": r} for i, r in enumerate(ids)
    ]
    policy = offline_policy(
        demo_bundles_dir / "edge" / "digits",
        sync=f"batch_size: 4\n  interval_ms: 50\n  max_attempts: {MAX_ATTEMPTS}",
    ).replace(f"id: {CLOUD_NODE}", f"id: {NODE}")
    proxy.set_mode("down")
    node = start_edge(policy, f"http://127.0.0.1:{proxy.port}", env={"EDGEROUTE_TEST_TOKEN": TOKEN})
    answers = asyncio.run(send_all(node.url, bodies, concurrency=4))
    assert all(a is not None and a.status_code == 200 and not a.json()["final"] for a in answers)

    original = tokens_file.read_text(encoding="utf-8")
    tokens_file.write_text(original.replace(f"{NODE} {TOKEN}\n", ""), encoding="utf-8")
    proxy.set_mode("pass")
    assert wait_until(lambda: _connectivity(node)["credentials"] == "rejected", 30)
    paused_at = _drains(node)
    assert wait_until(lambda: _drains(node) >= paused_at + 2 * MAX_ATTEMPTS, 30)
    status = node.status()
    assert status["queue"]["depth"] == N_ITEMS  # type: ignore[index]
    assert status["results"].get("failed", 0) == 0  # type: ignore[union-attr]
    assert status["connectivity"]["state"] == "online"  # type: ignore[index]
    metrics = httpx.get(f"{node.url}/metrics", timeout=5).text
    assert "edgeroute_cloud_credentials_rejected 1.0" in metrics

    tokens_file.write_text(original, encoding="utf-8")
    assert wait_until(lambda: node.status()["queue"]["depth"] == 0, 60)  # type: ignore[index]
    results = asyncio.run(fetch_results(node.url, ids))
    assert {r["status"] for r in results.values()} == {"done"}, results
    assert _connectivity(node)["credentials"] == "accepted"
