"""The shared model runtime: Prediction records, the canary wrapper, one bundle loader."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cloud_service.model import CloudModel
from edge_node.lifecycle.canary import CanaryModel
from edgeroute.demo_models import load_test_split
from router.errors import BundleError
from router.manifest import MANIFEST_FILE, MODEL_FILE, sha256_hex
from runtime.bundle import load_bundle
from runtime.model import Model, Prediction, new_prediction
from runtime.onnx_model import OnnxModel


@pytest.fixture(scope="module")
def edge(demo_bundles_dir: Path) -> OnnxModel:
    """The demo edge digits model."""
    return OnnxModel.load(demo_bundles_dir / "edge" / "digits")


@pytest.fixture(scope="module")
def cloud(demo_bundles_dir: Path) -> OnnxModel:
    """The demo cloud digits model (same labels and input spec, another version)."""
    return OnnxModel.load(demo_bundles_dir / "cloud" / "digits")


@pytest.fixture(scope="module")
def xs(demo_bundles_dir: Path) -> np.ndarray:
    """Ten test-split digits as float32 rows [10, 64]."""
    x, _ = load_test_split(demo_bundles_dir)
    return np.asarray(x[:10], dtype=np.float32)


def test_prediction_carries_the_answering_version(edge: OnnxModel, xs: np.ndarray) -> None:
    """OnnxModel.predict returns a Prediction of [N, C] float32 rows and its own version."""
    answer = edge.predict(xs)
    assert isinstance(answer, Prediction)
    assert answer.version == edge.version == "digits-edge-1.0.0"
    assert answer.probs.shape == (10, len(edge.labels)) and answer.probs.dtype == np.float32
    one = edge.predict(xs[3:4])
    np.testing.assert_allclose(one.probs[0], answer.probs[3], atol=1e-7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        answer.version = "other"  # type: ignore[misc]


def test_new_prediction_matches_the_dataclass_constructor() -> None:
    """new_prediction sets every field of Prediction, like Prediction(probs, version)."""
    probs = np.zeros((1, 3), dtype=np.float32)
    fast, plain = new_prediction(probs, "v1"), Prediction(probs, "v1")
    names = [f.name for f in dataclasses.fields(Prediction)]
    assert names == ["probs", "version"]
    assert all(getattr(fast, n) is getattr(plain, n) for n in names)
    assert repr(fast) == repr(plain)


def test_predict_accepts_flat_rows_and_shaped_items(demo_bundles_dir: Path, tmp_path: Path) -> None:
    """A model whose items are 8x8 takes flat [N, 64] rows and [N, 8, 8] items alike."""
    folder = Path(shutil.copytree(demo_bundles_dir / "edge" / "digits", tmp_path / "digits"))
    _reshape_input(folder, [None, 8, 8])
    model = OnnxModel.load(folder)
    x = np.arange(2 * 64, dtype=np.float32).reshape(2, 64) % 17
    flat, shaped = model.predict(x), model.predict(x.reshape(2, 8, 8))
    np.testing.assert_array_equal(flat.probs, shaped.probs)
    assert flat.version == shaped.version == model.version


def test_canary_answers_with_the_candidate_version_for_its_share(
    edge: OnnxModel, cloud: OnnxModel, xs: np.ndarray
) -> None:
    """Fraction 0.5: every second call is the candidate's Prediction, the rest the
    current's; the wrapper itself reports the current model's version, bundle and spec."""
    canary = CanaryModel(edge, cloud, "fraction", 0.5, background=False)
    model: Model = canary  # the wrapper is a Model, not a subclass of OnnxModel
    assert not isinstance(model, OnnxModel)
    answers = [model.predict(x.reshape(1, -1)) for x in xs]
    assert [a.version for a in answers] == [edge.version, cloud.version] * 5
    for x, a in zip(xs, answers, strict=True):
        by = cloud if a.version == cloud.version else edge
        np.testing.assert_allclose(a.probs, by.predict(x.reshape(1, -1)).probs, atol=1e-7)
    assert (canary.version, canary.task, canary.labels) == (edge.version, edge.task, edge.labels)
    assert canary.bundle is edge.bundle and canary.input_spec == edge.input_spec
    counts = canary.counts()
    assert (counts.served_by_candidate, counts.compared, counts.errors) == (5, 5, 0)


def test_shadow_canary_always_answers_with_the_current_version(
    edge: OnnxModel, cloud: OnnxModel, xs: np.ndarray
) -> None:
    """Shadow mode: every Prediction is the current model's; the candidate is compared."""
    canary = CanaryModel(edge, cloud, "shadow", 0.0, background=False)
    assert {canary.predict(x.reshape(1, -1)).version for x in xs} == {edge.version}
    assert canary.counts().compared == len(xs) and canary.counts().served_by_candidate == 0


def _flip_model_byte(folder: Path) -> None:
    data = bytearray((folder / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / MODEL_FILE).write_bytes(bytes(data))


def _truncate_model(folder: Path) -> None:
    data = (folder / MODEL_FILE).read_bytes()[:200]
    (folder / MODEL_FILE).write_bytes(data)
    _edit_manifest(folder, "files", {MODEL_FILE: sha256_hex(data)})


def _too_few_labels(folder: Path) -> None:
    _edit_manifest(folder, "labels", ["a", "b", "c"])


def _bad_json(folder: Path) -> None:
    (folder / MANIFEST_FILE).write_text("{not json")


def _no_model(folder: Path) -> None:
    (folder / MODEL_FILE).unlink()


@pytest.mark.parametrize(
    "breakage", [_flip_model_byte, _truncate_model, _too_few_labels, _bad_json, _no_model]
)
def test_cloud_and_edge_refuse_a_broken_bundle_alike(
    demo_bundles_dir: Path, tmp_path: Path, breakage: Callable[[Path], None]
) -> None:
    """The cloud's CloudModel.load and the edge's load_bundle raise the same BundleError."""
    folder = Path(shutil.copytree(demo_bundles_dir / "cloud" / "digits", tmp_path / "digits"))
    breakage(folder)
    with pytest.raises(BundleError) as on_edge:
        load_bundle(folder)
    with pytest.raises(BundleError) as on_cloud:
        CloudModel.load(folder)
    edge_err, cloud_err = on_edge.value, on_cloud.value
    assert cloud_err.message == edge_err.message
    assert (cloud_err.code, cloud_err.field) == (edge_err.code, edge_err.field)


def _edit_manifest(folder: Path, key: str, value: object) -> None:
    data = json.loads((folder / MANIFEST_FILE).read_text())
    data[key] = value
    (folder / MANIFEST_FILE).write_text(json.dumps(data))


def _reshape_input(folder: Path, shape: list[int | None]) -> None:
    """Give the bundle's graph and manifest the input shape `shape` (a Reshape node feeds
    the original flat input), updating the model's sha256."""
    import onnx
    from onnx import helper

    graph_model = onnx.load_from_string((folder / MODEL_FILE).read_bytes())
    graph = graph_model.graph
    old_input = graph.input[0]
    flat_name = old_input.name + "_flat"
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old_input.name:
                node.input[i] = flat_name
    target = helper.make_tensor("flat_shape", onnx.TensorProto.INT64, [2], [-1, 64])
    graph.initializer.append(target)
    graph.node.insert(0, helper.make_node("Reshape", [old_input.name, "flat_shape"], [flat_name]))
    new_input = helper.make_tensor_value_info(
        old_input.name, old_input.type.tensor_type.elem_type, ["N", *shape[1:]]
    )
    graph.input.remove(old_input)
    graph.input.insert(0, new_input)
    data = graph_model.SerializeToString()
    (folder / MODEL_FILE).write_bytes(data)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["input"]["shape"] = shape
    manifest["files"][MODEL_FILE] = sha256_hex(data)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
