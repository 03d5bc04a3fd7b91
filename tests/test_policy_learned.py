"""The learned escalation score as a policy option: a real edge node routes by it and logs it;
a broken learned_score file is a policy error."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_node.lifecycle.active_policy import load_policy_file
from edge_node.observe.decision_log import read_decision_log
from router.candidates import top_k
from router.errors import PolicyError
from router.learned_score import fit_learned_score, from_json, to_json
from router.scores import all_scores
from tests.edge_fixtures import EdgeNode, policy_text


def _learned_file(bundles: Path, split: tuple[np.ndarray, np.ndarray], out: Path) -> Path:
    from runtime.onnx_model import OnnxModel

    model = OnnxModel.load(bundles / "edge" / "digits")
    x, y = split
    rows, right = [], []
    for p, t in zip(model.predict(x).probs.tolist(), y, strict=True):
        cands = top_k(p, model.labels, 3)
        rows.append((all_scores(p), [(c.label, c.score) for c in cands]))
        right.append(cands[0].label == str(int(t)))
    path = out / "learned.json"
    path.write_text(to_json(fit_learned_score(rows, right)))
    assert from_json(path.read_text()).labels == tuple(sorted(model.labels))
    return path


def test_edge_node_routes_by_the_learned_score(
    start_edge: Callable[..., EdgeNode],
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    """With score: learned, each request is confident exactly when its logged learned score
    is at or above the threshold (no cloud: a zero call budget answers the rest locally)."""
    learned = _learned_file(demo_bundles_dir, digits_split, tmp_path)
    text = policy_text(
        demo_bundles_dir / "edge" / "digits", threshold=0.9, cost="  daily_calls: 0"
    ).replace("score: margin", f"score: learned\n    learned_score: {learned}")
    node = start_edge(text, "http://127.0.0.1:9")
    x = digits_split[0]
    reasons = [node.infer({"task": "digits", "inputs": x[i].tolist()}).json() for i in range(40)]
    node.proc.terminate()
    node.proc.wait(30)
    records = list(read_decision_log(node.data_dir / "decisions"))
    assert len(records) == 40
    by_id = {r.request_id: r for r in records}
    for body in reasons:
        rec = by_id[body["request_id"]]
        want = "confident" if rec.scores["learned"] >= 0.9 else "budget_exhausted"
        assert body["reason"] == want
    assert {b["reason"] for b in reasons} == {"confident", "budget_exhausted"}


def test_missing_or_bad_learned_file_is_a_policy_error(tmp_path: Path) -> None:
    """score: learned without a readable learned_score file fails validation."""
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    base = policy_text(bundle).replace("token_env: EDGEROUTE_TEST_TOKEN", "token_env: null")
    path = tmp_path / "p.yaml"
    path.write_text(base.replace("score: margin", "score: learned"))
    with pytest.raises(PolicyError, match="score: learned needs learned_score"):
        load_policy_file(path)
    (tmp_path / "bad.json").write_text("{}")
    path.write_text(base.replace("score: margin", "score: learned\n    learned_score: bad.json"))
    with pytest.raises(PolicyError, match="not a learned score"):
        load_policy_file(path)
