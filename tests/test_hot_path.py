"""The local answer's hot-path parts give the same answers as the plain, slower calls."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from edge_node.cloud.request_ids import RequestIds
from runtime.onnx_model import OnnxModel
from runtime.ort_call import direct_runner


def test_direct_runner_matches_session_run(demo_bundles_dir: Path) -> None:
    """The bound-runner call returns exactly what InferenceSession.run returns."""
    model = OnnxModel.load(demo_bundles_dir / "edge" / "digits")
    sess = model.bundle.session
    x = np.random.default_rng(0).uniform(0, 16, size=(5, 64)).astype(np.float32)
    want = sess.run(["probabilities"], {"input": x})[0]
    got = direct_runner(sess)(["probabilities"], {"input": x})[0]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(model.predict(x).probs, want)


def test_direct_runner_falls_back_to_public_run() -> None:
    """A session object without the bound runner is called through its public `run`."""

    class Plain:
        def run(self, names: list[str], feeds: dict[str, object]) -> list[object]:
            return [names, sorted(feeds)]

    assert direct_runner(Plain())(("p",), {"input": 1}) == [["p"], ["input"]]


def test_request_ids_are_unique_random_hex_with_128_bits_from_the_source() -> None:
    """Generated ids are 32 hex digits, never repeat, share no prefix between generators,
    and are exactly the 16 bytes the random source gave (no counter part)."""
    gen_a, gen_b = RequestIds(), RequestIds()
    ids = [gen_a.new() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids[:100])
    assert len({i[:8] for i in ids}) > 9_000  # no shared per-process prefix
    assert gen_b.new()[:16] != ids[0][:16]
    fixed = RequestIds(rand=lambda n: bytes(range(n)))
    assert fixed.new() == bytes(range(16)).hex()


def test_request_ids_remember_the_newest_unsent_ids_only() -> None:
    """Past `keep` ids the oldest unsent one is forgotten first (not a first send any
    more); a newer one is taken once, and an echoed id is never unsent again."""
    ids = RequestIds(keep=3)
    made = [ids.new() for _ in range(5)]
    assert not ids.take_unsent([made[0]]) and not ids.take_unsent([made[1]])
    assert ids.take_unsent([made[2], made[3]])
    assert not ids.take_unsent([made[4], made[2]])
    assert not ids.take_unsent([made[4]])


def test_fastapi_baseline_answers_with_the_models_label(demo_bundles_dir: Path) -> None:
    """The benchmark's hand-written baseline really answers (200, the model's label)."""
    from benchmarks.baselines.fastapi_onnx import build_app

    bundle = demo_bundles_dir / "edge" / "digits"
    x = np.random.default_rng(1).uniform(0, 16, size=64).astype(np.float32)
    model = OnnxModel.load(bundle)
    want = model.labels[int(np.argmax(model.predict(x.reshape(1, -1)).probs[0]))]
    with TestClient(build_app(bundle)) as client:
        r = client.post("/infer", json={"inputs": x.tolist()})
    assert r.status_code == 200, r.text
    assert r.json()["label"] == want


def test_service_decision_records_validate_with_every_score(
    demo_bundles_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records built off the request path validate as DecisionRecord and carry all scores."""
    import asyncio

    from edge_node.node import Node
    from edge_node.observe.decision_log import read_decision_log
    from edge_node.settings import EdgeSettings
    from router.edge_api import InferRequest
    from router.scores import SCORERS
    from tests.edge_fixtures import policy_text

    monkeypatch.setenv("EDGEROUTE_TEST_TOKEN", "t")
    (tmp_path / "p.yaml").write_text(
        policy_text(demo_bundles_dir / "edge" / "digits", threshold=0.001)
    )
    node = Node(EdgeSettings(policy_path=tmp_path / "p.yaml", data_dir=tmp_path / "d"))
    svc = node.service
    x = np.random.default_rng(2).uniform(0, 16, size=(3, 64))
    bodies = [
        asyncio.run(svc.infer(InferRequest(task="digits", inputs=row.tolist()))).body for row in x
    ]
    node.close_stores()
    records = list(read_decision_log(tmp_path / "d" / "decisions"))
    assert [r.request_id for r in records] == [b["request_id"] for b in bodies]
    assert all(set(r.scores) == set(SCORERS) for r in records)
    assert [r.final_label for r in records] == [b["label"] for b in bodies]
    assert all(
        r.route == b["route"] and r.reason == b["reason"]
        for r, b in zip(records, bodies, strict=True)
    )


def test_infer_endpoint_answers_like_the_route_and_maps_bugs_to_json(
    demo_bundles_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POST /v1/infer (served in front of the router) answers, rejects bad JSON with 400,
    oversized bodies with 413, a bug with a JSON 500; GET falls through to FastAPI (405)."""
    from edge_node.http.app import create_app
    from edge_node.settings import EdgeSettings
    from tests.edge_fixtures import policy_text

    monkeypatch.setenv("EDGEROUTE_TEST_TOKEN", "t")
    (tmp_path / "p.yaml").write_text(policy_text(demo_bundles_dir / "edge" / "digits"))
    settings = EdgeSettings(
        policy_path=tmp_path / "p.yaml", data_dir=tmp_path / "d", max_body_bytes=4096
    )
    app = create_app(settings)
    x = [1.0] * 64
    with TestClient(app) as client:
        ok = client.post("/v1/infer", json={"task": "digits", "inputs": x})
        assert ok.status_code in (200, 202) and ok.json()["task"] == "digits"
        bad = client.post("/v1/infer", content=b"{nope", headers={"content-type": "x"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "malformed_json"
        big = client.post("/v1/infer", content=b" " * 5000)
        assert big.status_code == 413
        assert client.get("/v1/infer").status_code == 405

        async def broken(_: object) -> object:
            raise RuntimeError("bug")

        monkeypatch.setattr(app.state.service, "infer", broken)
        err = client.post("/v1/infer", json={"task": "digits", "inputs": x})
        assert err.status_code == 500 and err.json()["error"]["message"] == "internal error"
