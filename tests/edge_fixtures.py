"""Pytest plugin: real edge node processes on 127.0.0.1, a fault proxy in front of the cloud."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgeroute import processes
from edgeroute.netproxy import ThreadedFaultProxy

CLOUD_TOKEN = "test-token"
CLOUD_NODE = "test-node"


RETRY = "{max_attempts: 2, backoff_initial_ms: 10, backoff_max_ms: 50}"
BREAKER = "{failure_threshold: 2, open_ms: 300, open_max_ms: 1000, probe_interval_ms: 100}"


def policy_head(
    *,
    queue: str = "max_items: 10000\n  max_bytes: 67108864\n  on_full: reject",
    sync: str = "batch_size: 32\n  interval_ms: 50",
    cost: str = "price_per_call: 0.01",
    retry: str = RETRY,
    breaker: str = BREAKER,
    connect_timeout_ms: int = 200,
    request_timeout_ms: int = 2000,
) -> str:
    """Every section of a test policy but `tasks`: this node (`CLOUD_NODE`, token from
    EDGEROUTE_TEST_TOKEN), the cloud settings, and the `queue`/`sync`/`cost` bodies (YAML
    lines indented by 2 after the first). The caller appends `tasks:`."""
    return f"""\
version: 1
node:
  id: {CLOUD_NODE}
cloud:
  url: http://127.0.0.1:9
  token_env: EDGEROUTE_TEST_TOKEN
  connect_timeout_ms: {connect_timeout_ms}
  request_timeout_ms: {request_timeout_ms}
  retry: {retry}
  breaker: {breaker}
queue:
  {queue}
sync:
  {sync}
cost:
  {cost}
"""


def policy_text(
    edge_bundle: Path,
    *,
    extra_tasks: str = "",
    max_items: int = 10000,
    on_full: str = "reject",
    sync: str = "",
    cost: str = "",
    threshold: float = 0.6,
) -> str:
    """A policy for tests: task `digits` (hybrid) plus optional extra task blocks; `sync` and
    `cost` are extra lines (indented by 2) of those sections."""
    head = policy_head(
        queue=f"max_items: {max_items}\n  max_bytes: 67108864\n  on_full: {on_full}",
        sync="batch_size: 32\n  interval_ms: 50\n" + sync.rstrip("\n"),
        cost="price_per_call: 0.01\n" + cost.rstrip("\n"),
    )
    return f"""\
{head}tasks:
  digits:
    edge_bundle: {edge_bundle}
    threshold: {threshold}
    score: margin
    deadline_ms: 2000
{extra_tasks}
"""


@dataclass
class EdgeNode:
    """A running edge node process."""

    proc: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    log_path: Path
    policy_path: Path

    def infer(self, body: dict[str, object], timeout: float = 10.0) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/infer", json=body, timeout=timeout)

    def status(self) -> dict[str, object]:
        data: dict[str, object] = httpx.get(f"{self.url}/v1/status", timeout=5).json()
        return data


@pytest.fixture
def proxy(cloud_url: str) -> Iterator[ThreadedFaultProxy]:
    """A fault proxy in front of the session's cloud app (mode `pass`)."""
    port = int(cloud_url.rsplit(":", 1)[1].rstrip("/"))
    p = ThreadedFaultProxy("127.0.0.1", port)
    p.start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def start_edge(tmp_path: Path) -> Iterator[Callable[..., EdgeNode]]:
    """Factory starting edge node processes; every one is stopped at teardown."""
    started: list[EdgeNode] = []

    def _start(
        policy: str,
        cloud_url: str,
        data_dir: Path | None = None,
        name: str = "edge",
        *,
        log_args: tuple[str, ...] = ("--log-level", "warning"),
        env: dict[str, str] | None = None,
        cli: tuple[str, ...] = (),
    ) -> EdgeNode:
        """Start a node (`cli`: the `edgeroute` command to run, default this interpreter's
        `-m edgeroute.cli`) and wait until it is ready."""
        policy_path = tmp_path / f"{name}-policy.yaml"
        policy_path.write_text(policy)
        data = data_dir or tmp_path / f"{name}-data"
        port = processes.free_port()
        log_path = tmp_path / f"{name}.log"
        proc = processes.start(
            [
                *(cli or processes.edgeroute_cmd()),
                "edge",
                "serve",
                "--policy",
                str(policy_path),
                "--data-dir",
                str(data),
                "--port",
                str(port),
                "--cloud-url",
                cloud_url,
                *log_args,
            ],
            log_path,
            env={"EDGEROUTE_TEST_TOKEN": CLOUD_TOKEN, **(env or {})},
        )
        node = EdgeNode(proc, f"http://127.0.0.1:{port}", data, log_path, policy_path)
        started.append(node)
        processes.wait_http(f"{node.url}/readyz", proc, 60, log_path)
        return node

    yield _start
    for node in started:
        processes.stop(node.proc, timeout_s=10)


@pytest.fixture(scope="session")
def digits_split(demo_bundles_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The recorded digits test split (inputs, labels)."""
    from edgeroute.demo_models import load_test_split

    return load_test_split(demo_bundles_dir)


@pytest.fixture(scope="session")
def edge_margins(demo_bundles_dir: Path, digits_split: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The edge model's margin score on each test item (to pick confident/unsure inputs)."""
    from router.scores import margin
    from runtime.onnx_model import OnnxModel

    model = OnnxModel.load(demo_bundles_dir / "edge" / "digits")
    probs = model.predict(digits_split[0]).probs
    return np.array([margin(p.tolist()) for p in probs])
