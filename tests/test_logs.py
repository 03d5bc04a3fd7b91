"""Per-request log lines of a real edge node process: fixed fields, sampling, no payloads."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgeroute import processes
from edgeroute.netproxy import ThreadedFaultProxy
from tests.edge_fixtures import CLOUD_TOKEN, policy_text

pytestmark = pytest.mark.ray

FIXED = {"request_id", "task", "route", "reason", "latency_ms", "model_version", "policy_revision"}
MARKER = 13.371337  # a value no log line may contain

RUN = uuid.uuid4().hex[:8]  # ids unique per run: the session cloud dedups by id


def _serve(tmp_path: Path, policy: str, cloud_url: str, rate: str) -> tuple[object, str, Path]:
    (tmp_path / "p.yaml").write_text(policy)
    port, log_path = processes.free_port(), tmp_path / f"edge-{rate}.log"
    argv = processes.edgeroute_cmd(
        "edge", "serve", "--policy", str(tmp_path / "p.yaml"), "--data-dir",
        str(tmp_path / f"data-{rate}"), "--port", str(port), "--cloud-url", cloud_url,
        "--log-level", "info", "--log-sample-rate", rate,
    )  # fmt: skip
    proc = processes.start(argv, log_path, env={"EDGEROUTE_TEST_TOKEN": CLOUD_TOKEN})
    url = f"http://127.0.0.1:{port}"
    processes.wait_http(f"{url}/readyz", proc, 60, log_path)
    return proc, url, log_path


def test_request_lines_carry_fixed_fields_and_no_inputs(
    tmp_path: Path,
    proxy: ThreadedFaultProxy,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
    edge_margins: np.ndarray,
) -> None:
    """With --log-sample-rate 1 every request (edge, cloud, batch item) writes one JSON line
    with the fixed fields, and no line contains an input value; at rate 0 none is written."""
    x, _ = digits_split
    policy = policy_text(demo_bundles_dir / "edge" / "digits")
    proc, url, log_path = _serve(tmp_path, policy, f"http://127.0.0.1:{proxy.port}", "1")
    sure, unsure = int(np.argmax(edge_margins)), int(np.argmin(edge_margins))
    ids = []
    try:
        for n, i in enumerate((sure, unsure)):
            inputs = x[i].tolist()
            inputs[-1] = MARKER if x[i][-1] == 0 else inputs[-1]  # keep the item valid
            body = {"task": "digits", "inputs": inputs, "request_id": f"log-{RUN}-{n}"}
            assert httpx.post(f"{url}/v1/infer", json=body, timeout=10).status_code == 200
            ids.append(f"log-{RUN}-{n}")
        batch = {
            "items": [{"task": "digits", "inputs": x[sure].tolist(), "request_id": f"log-{RUN}-b"}]
        }
        assert httpx.post(f"{url}/v1/infer", json=batch, timeout=10).status_code == 200
        ids.append(f"log-{RUN}-b")
    finally:
        processes.stop(proc)  # type: ignore[arg-type]
    text = log_path.read_text()
    assert str(MARKER) not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    requests = [rec for rec in lines if rec.get("event") == "request"]
    assert sorted(r["request_id"] for r in requests) == sorted(ids)
    for rec in requests:
        assert set(rec) >= FIXED, rec
        assert "inputs" not in rec and "candidates" not in rec
    assert {r["route"] for r in requests} == {"edge", "cloud"}

    quiet_proc, quiet_url, quiet_log = _serve(tmp_path, policy, "http://127.0.0.1:9", "0")
    try:
        body = {"task": "digits", "inputs": x[sure].tolist()}
        assert httpx.post(f"{quiet_url}/v1/infer", json=body, timeout=10).status_code == 200
    finally:
        processes.stop(quiet_proc)  # type: ignore[arg-type]
    assert '"event": "request"' not in quiet_log.read_text()
