"""Loading bundles on the edge and the cloud, and the cloud's re-ranking."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_service.model import CloudModel, load_cloud_models
from edgeroute.demo_models import DemoBuild, load_test_split, read_demo_build
from router.candidates import top_k
from router.errors import BundleError, InputError
from router.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    GraphTensor,
    check_graph_io,
    parse_manifest,
    sha256_hex,
)
from router.wire import RerankFailure, RerankItem, RerankResult
from runtime.bundle import load_bundle
from runtime.onnx_model import OnnxModel


@pytest.fixture(scope="module")
def built(demo_bundles_dir: Path) -> DemoBuild:
    """The session's demo bundles (tests.ray_fixtures builds them once) and their metrics."""
    return read_demo_build(demo_bundles_dir)


@pytest.fixture(scope="module")
def split(built: DemoBuild) -> tuple[np.ndarray, np.ndarray]:
    """The recorded test split (inputs, labels)."""
    return load_test_split(built.split_path.parent)


@pytest.fixture(scope="module")
def cloud(built: DemoBuild) -> CloudModel:
    """The cloud digits model, loaded once."""
    return CloudModel.load(built.cloud_dir)


def _copy(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst / src.name))


def _edit_manifest(folder: Path, **changes: Any) -> None:
    data = json.loads((folder / MANIFEST_FILE).read_text())
    for key, value in changes.items():
        target = data
        *parents, last = key.split("__")
        for p in parents:
            target = target[p]
        target[last] = value
    (folder / MANIFEST_FILE).write_text(json.dumps(data))


def _item(x: np.ndarray, rid: str, candidates: list[str] | None = None, **kw: Any) -> RerankItem:
    return RerankItem(
        task=kw.get("task", "digits"),
        request_id=rid,
        inputs=kw.get("inputs", x.tolist()),
        candidates=candidates,
    )


# --- edge loader ------------------------------------------------------------------------


def test_edge_bundle_loads_and_predicts(built: DemoBuild, split: tuple[Any, Any]) -> None:
    """A good bundle loads; predict returns [N, 10] float32 rows summing to 1."""
    model = OnnxModel.load(built.edge_dir)
    x, _ = split
    probs = model.predict(x[:5]).probs
    assert probs.shape == (5, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(model.predict(x[:1]).probs[0], probs[0], atol=1e-7)
    row = model.predict(np.asarray(x[1:2], dtype=np.float32)).probs[0].tolist()
    assert isinstance(row, list)
    np.testing.assert_allclose(row, probs[1], atol=1e-7)
    assert model.labels == tuple(str(d) for d in range(10))
    assert (model.task, model.version) == ("digits", "digits-edge-1.0.0")
    assert model.input_spec.item_size == 64


def test_edge_predict_rejects_wrong_shapes(built: DemoBuild) -> None:
    """Wrong item sizes and empty batches raise InputError on field 'inputs'."""
    model = OnnxModel.load(built.edge_dir)
    for bad in (np.zeros((2, 63)), np.zeros(64), np.zeros((0, 64))):
        with pytest.raises(InputError) as err:
            model.predict(bad)
        assert err.value.field == "inputs"
    with pytest.raises(InputError):
        model.predict(np.zeros((1, 65)))


def test_sha256_mismatch_is_rejected(built: DemoBuild, tmp_path: Path) -> None:
    """Flipping one byte of model.onnx makes loading fail on the hash check."""
    folder = _copy(built.edge_dir, tmp_path)
    data = bytearray((folder / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(folder)
    with pytest.raises(BundleError, match="sha256"):
        CloudModel.load(folder)


def test_truncated_model_is_rejected_by_onnxruntime(built: DemoBuild, tmp_path: Path) -> None:
    """A truncated model whose hash was updated fails in onnxruntime, mapped to BundleError."""
    folder = _copy(built.edge_dir, tmp_path)
    data = (folder / MODEL_FILE).read_bytes()[:200]
    (folder / MODEL_FILE).write_bytes(data)
    _edit_manifest(folder, files={MODEL_FILE: sha256_hex(data)})
    with pytest.raises(BundleError, match="onnxruntime cannot load") as err:
        load_bundle(folder)
    assert str(folder / MODEL_FILE) in err.value.message


def test_wrong_input_name_is_rejected(built: DemoBuild, tmp_path: Path) -> None:
    """A manifest naming an input the graph does not have fails with field input.name."""
    folder = _copy(built.edge_dir, tmp_path)
    _edit_manifest(folder, input__name="pixels")
    with pytest.raises(BundleError, match=r"'input'.*'pixels'") as err:
        load_bundle(folder)
    assert err.value.field == "input.name"


def test_wrong_label_count_is_rejected(built: DemoBuild, tmp_path: Path) -> None:
    """A manifest with fewer labels than the graph's classes fails with field labels."""
    folder = _copy(built.cloud_dir, tmp_path)
    _edit_manifest(folder, labels=["a", "b", "c"])
    with pytest.raises(BundleError, match="10 classes") as err:
        CloudModel.load(folder)
    assert err.value.field == "labels"


def test_invalid_manifest_names_the_field(built: DemoBuild, tmp_path: Path) -> None:
    """A manifest that breaks the schema raises BundleError naming the field."""
    folder = _copy(built.edge_dir, tmp_path)
    _edit_manifest(folder, role="phone")
    with pytest.raises(BundleError, match="role") as err:
        load_bundle(folder)
    assert err.value.field == "role"
    (folder / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(folder)


def test_missing_folder_and_files(built: DemoBuild, tmp_path: Path) -> None:
    """A missing folder, manifest or model raises BundleError naming the path."""
    with pytest.raises(BundleError, match="no such bundle folder"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match="no such bundle folder"):
        CloudModel.load(tmp_path / "nope")
    folder = _copy(built.edge_dir, tmp_path)
    (folder / MODEL_FILE).unlink()
    with pytest.raises(BundleError, match=f"{MODEL_FILE}: missing"):
        load_bundle(folder)
    (folder / MANIFEST_FILE).unlink()
    with pytest.raises(BundleError, match=f"{MANIFEST_FILE}: missing"):
        load_bundle(folder)


def test_graph_io_checks_shape_and_type(built: DemoBuild) -> None:
    """check_graph_io rejects a fixed batch axis, a wrong width, a wrong dtype, no output."""
    manifest = parse_manifest((built.edge_dir / MANIFEST_FILE).read_text(), "m")
    out = [GraphTensor("probabilities", (None, 10), "tensor(float)")]
    check_graph_io(manifest, [GraphTensor("input", ("N", 64), "tensor(float)")], out, "ok")
    bad_inputs = [
        (GraphTensor("input", (1, 64), "tensor(float)"), "input.shape"),
        (GraphTensor("input", (None, 32), "tensor(float)"), "input.shape"),
        (GraphTensor("input", (None, 64, 1), "tensor(float)"), "input.shape"),
        (GraphTensor("input", (None, 64), "tensor(double)"), "input.dtype"),
    ]
    for graph_in, field in bad_inputs:
        with pytest.raises(BundleError) as err:
            check_graph_io(manifest, [graph_in], out, "bad")
        assert err.value.field == field
    with pytest.raises(BundleError) as err:
        check_graph_io(manifest, [GraphTensor("input", (None, 64), "tensor(float)")], [], "x")
    assert err.value.field == "output.name"


# --- cloud loader and re-ranking --------------------------------------------------------


def test_cloud_rerank_all_labels_matches_cloud_accuracy(
    cloud: CloudModel, built: DemoBuild, split: tuple[Any, Any]
) -> None:
    """With candidates=None every label is scored and top-1 accuracy is the recorded one."""
    x, y = split
    results = cloud.rerank([_item(row, f"r{i}") for i, row in enumerate(x)])
    assert all(isinstance(r, RerankResult) for r in results)
    ok = [r for r in results if isinstance(r, RerankResult)]
    assert [r.request_id for r in ok] == [f"r{i}" for i in range(len(x))]
    assert all(r.scored == "all_labels" and len(r.candidates) == 10 for r in ok)
    acc = float(np.mean([r.label == str(t) for r, t in zip(ok, y, strict=True)]))
    assert acc == pytest.approx(built.cloud_accuracy)
    assert ok[0].model_version == "digits-cloud-1.0.0"


def test_cloud_rerank_restricts_to_candidates(cloud: CloudModel, split: tuple[Any, Any]) -> None:
    """Only the given labels come back, renormalised, best first."""
    x, _ = split
    full = cloud.rerank([_item(x[0], "a")])[0]
    assert isinstance(full, RerankResult)
    worst_three = [c.label for c in full.candidates[-3:]]
    result = cloud.rerank([_item(x[0], "b", worst_three)])[0]
    assert isinstance(result, RerankResult)
    assert result.scored == "candidates"
    assert sorted(c.label for c in result.candidates) == sorted(worst_three)
    assert result.label != full.label and result.label in worst_three
    scores = [c.score for c in result.candidates]
    assert scores == sorted(scores, reverse=True)
    assert sum(scores) == pytest.approx(1.0)


def test_cloud_bad_items_fail_alone(cloud: CloudModel, split: tuple[Any, Any]) -> None:
    """Bad items become RerankFailure with code and field; the good ones are answered."""
    x, y = split
    items = [
        _item(x[0], "good0"),
        _item(x[1], "short", inputs=[1.0] * 10),
        _item(x[2], "label", ["3", "eleven"]),
        _item(x[3], "task", task="faces"),
        _item(x[4], "range", inputs=[17.0] * 64),
        _item(x[5], "nan", inputs=[float("nan")] * 64),
        _item(x[6], "empty", []),
        _item(x[7], "good1", ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]),
    ]
    results = cloud.rerank(items)
    assert [r.request_id for r in results] == [i.request_id for i in items]
    errors = {r.request_id: r.error for r in results if isinstance(r, RerankFailure)}
    assert set(errors) == {"short", "label", "task", "range", "nan", "empty"}
    assert (errors["short"].code, errors["short"].field) == ("invalid_input", "inputs")
    assert (errors["label"].code, errors["label"].field) == ("unknown_label", "candidates")
    assert "eleven" in errors["label"].message
    assert (errors["task"].code, errors["task"].field) == ("unknown_task", "task")
    assert (
        errors["range"].field == "inputs[0]" and errors["nan"].field == "inputs[0]"
    )  # the edge's rule
    assert errors["empty"].field == "candidates"
    good = [r for r in results if isinstance(r, RerankResult)]
    assert [r.label for r in good] == [str(y[0]), str(y[7])]


def test_cloud_runs_the_model_once_per_batch(cloud: CloudModel, split: tuple[Any, Any]) -> None:
    """The model runs once for a whole batch of valid items."""
    calls: list[int] = []

    class CountingModel:
        """The cloud's model, counting the rows of each call."""

        def __getattr__(self, name: str) -> Any:
            return getattr(cloud.model, name)

        def predict(self, batch: np.ndarray) -> Any:
            calls.append(batch.shape[0])
            return cloud.model.predict(batch)

    counting = CloudModel(CountingModel())  # type: ignore[arg-type]
    x, _ = split
    counting.rerank(
        [_item(row, f"r{i}") for i, row in enumerate(x[:7])] + [_item(x[0], "x", ["z"])]
    )
    assert calls == [7]


def test_edge_candidates_then_cloud_rerank(
    cloud: CloudModel, built: DemoBuild, split: tuple[Any, Any]
) -> None:
    """Re-ranking the edge's top-3 on the cloud beats the edge alone (report the figure)."""
    x, y = split
    edge = OnnxModel.load(built.edge_dir)
    probs = edge.predict(x).probs
    items = [
        _item(row, f"r{i}", [c.label for c in top_k(p.tolist(), edge.labels, 3)])
        for i, (row, p) in enumerate(zip(x, probs, strict=True))
    ]
    labels = [r.label for r in cloud.rerank(items) if isinstance(r, RerankResult)]
    acc = float(np.mean([a == str(t) for a, t in zip(labels, y, strict=True)]))
    print(f"edge {built.edge_accuracy:.4f} -> edge top-3 + cloud rerank {acc:.4f}")
    assert acc > built.edge_accuracy + 0.05
    assert acc <= built.edge_topk_recall[3]


def test_load_cloud_models(built: DemoBuild, tmp_path: Path) -> None:
    """Every task folder is loaded by task; a single bundle dir works; wrong role fails."""
    models = load_cloud_models(built.cloud_dir.parent)
    assert list(models) == ["digits"]
    assert models["digits"].version == "digits-cloud-1.0.0"
    assert list(load_cloud_models(built.cloud_dir)) == ["digits"]
    with pytest.raises(BundleError, match="role") as err:
        load_cloud_models(built.edge_dir.parent)
    assert err.value.field == "role"
    with pytest.raises(BundleError, match="no bundle found"):
        load_cloud_models(tmp_path)
    with pytest.raises(BundleError, match="no such bundles folder"):
        load_cloud_models(tmp_path / "missing")
