"""The demo digits bundles: training, ONNX export, manifests, split file, determinism."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from edgeroute.demo_models import (
    SPLIT_FILE,
    DemoBuild,
    build_demo_bundles,
    bundles_present,
    fold_pooling,
    load_test_split,
    pooling_matrix,
    read_demo_build,
    topk_recall,
)
from router.errors import BundleError
from router.manifest import MANIFEST_FILE, MODEL_FILE, parse_manifest, sha256_hex
from runtime.onnx_model import OnnxModel

FIXED_NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> DemoBuild:
    """Both bundles built once for this module."""
    return build_demo_bundles(tmp_path_factory.mktemp("models"), seed=0, clock=lambda: FIXED_NOW)


def test_accuracies_in_expected_ranges(built: DemoBuild) -> None:
    """The edge model is the weaker one (~89%) and the cloud model is strong (>= 96%)."""
    assert 0.85 <= built.edge_accuracy <= 0.93
    assert built.cloud_accuracy >= 0.96
    assert built.train_size == 1347 and built.test_size == 450


def test_folded_pooling_equals_pooled_model() -> None:
    """Folding the 2x2 pooling into the coefficients gives the pooled model's probabilities."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    pool = pooling_matrix()
    pooled = LogisticRegression(C=0.05, max_iter=2000).fit(x[:600] @ pool, y[:600])
    folded = fold_pooling(pooled, pool)
    expected = pooled.predict_proba(x[600:] @ pool)
    np.testing.assert_allclose(folded.predict_proba(x[600:]), expected, rtol=0, atol=1e-12)
    assert folded.coef_.shape == (10, 64)
    assert pooled.coef_.shape == (10, 16)


def test_pooling_matrix_averages_2x2_blocks() -> None:
    """Each pooled cell averages exactly its four pixels."""
    image = np.arange(64, dtype=float)
    pooled = image @ pooling_matrix()
    assert pooled[0] == pytest.approx((0 + 1 + 8 + 9) / 4)
    assert pooled[15] == pytest.approx((54 + 55 + 62 + 63) / 4)
    assert np.count_nonzero(pooling_matrix(), axis=1).tolist() == [1] * 64


def test_manifests_are_valid_and_match_files(built: DemoBuild) -> None:
    """Each manifest validates, lists the model's sha256 and records split and accuracy."""
    for folder, role, acc in (
        (built.edge_dir, "edge", built.edge_accuracy),
        (built.cloud_dir, "cloud", built.cloud_accuracy),
    ):
        manifest = parse_manifest((folder / MANIFEST_FILE).read_text(), "test")
        assert manifest.role == role
        assert manifest.version == f"digits-{role}-1.0.0"
        assert manifest.task == "digits"
        assert manifest.labels == [str(d) for d in range(10)]
        assert manifest.input.name == "input" and manifest.input.shape == [None, 64]
        assert (manifest.input.min_value, manifest.input.max_value) == (0, 16)
        assert manifest.files[MODEL_FILE] == sha256_hex((folder / MODEL_FILE).read_bytes())
        assert manifest.metrics["test_accuracy"] == acc
        assert manifest.metrics["split_seed"] == 0
        assert manifest.metrics["test_size"] == 450
        assert datetime.fromisoformat(manifest.created_at) == FIXED_NOW
        assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_read_demo_build_matches_the_build(built: DemoBuild, tmp_path: Path) -> None:
    """read_demo_build recovers what build_demo_bundles returned; no bundles -> BundleError."""
    assert read_demo_build(built.split_path.parent) == built
    with pytest.raises(BundleError, match="cannot be read"):
        read_demo_build(tmp_path)


def test_test_split_replays_the_recorded_items(built: DemoBuild) -> None:
    """The split file holds the exact test items (by index into load_digits)."""
    from sklearn.datasets import load_digits

    x, y = load_test_split(built.split_path.parent)
    assert x.shape == (450, 64) and x.dtype == np.float32
    assert y.shape == (450,) and set(y.tolist()) == set(range(10))
    digits_x, digits_y = load_digits(return_X_y=True)
    with np.load(built.split_path) as data:
        idx = data["test_indices"]
    np.testing.assert_array_equal(x, digits_x[idx].astype(np.float32))
    np.testing.assert_array_equal(y, digits_y[idx])


def test_recorded_accuracy_is_what_the_edge_bundle_gives(built: DemoBuild) -> None:
    """Loading the edge bundle and predicting the split reproduces accuracy and top-k recall."""
    x, y = load_test_split(built.split_path.parent)
    probs = OnnxModel.load(built.edge_dir).predict(x).probs
    assert float(np.mean(probs.argmax(axis=1) == y)) == pytest.approx(built.edge_accuracy)
    for k in (2, 3, 4):
        assert topk_recall(probs, y, k) == pytest.approx(built.edge_topk_recall[k])
    recalls = [built.edge_topk_recall[k] for k in (2, 3, 4)]
    assert recalls == sorted(recalls) and recalls[1] >= 0.97
    print(f"edge top-k recall: {built.edge_topk_recall}")


def test_topk_recall_counts_label_in_top_k() -> None:
    """topk_recall counts rows whose true class is among the k best columns."""
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.3, 0.5]])
    assert topk_recall(probs, np.array([1, 0]), 1) == 0.0
    assert topk_recall(probs, np.array([1, 0]), 2) == 0.5
    assert topk_recall(probs, np.array([1, 0]), 3) == 1.0


def test_bundles_present(built: DemoBuild, tmp_path: Path) -> None:
    """bundles_present is true for a complete build and false when a part is missing."""
    assert bundles_present(built.split_path.parent)
    assert not bundles_present(tmp_path)
    (tmp_path / SPLIT_FILE).write_bytes(built.split_path.read_bytes())
    assert not bundles_present(tmp_path)


def test_build_is_deterministic(built: DemoBuild, tmp_path: Path) -> None:
    """Building again with the same seed gives the same models, split and accuracies."""
    again = build_demo_bundles(tmp_path, seed=0, clock=lambda: FIXED_NOW)
    assert (again.edge_accuracy, again.cloud_accuracy) == (
        built.edge_accuracy,
        built.cloud_accuracy,
    )
    assert again.edge_topk_recall == built.edge_topk_recall
    for name in ("edge", "cloud"):
        first = json.loads((built.split_path.parent / name / "digits" / MANIFEST_FILE).read_text())
        second = json.loads((tmp_path / name / "digits" / MANIFEST_FILE).read_text())
        assert first["files"] == second["files"]
    np.testing.assert_array_equal(
        load_test_split(tmp_path)[1], load_test_split(built.split_path.parent)[1]
    )
