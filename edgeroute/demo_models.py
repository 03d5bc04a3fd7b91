"""Build the demo `digits` bundles: a small edge model and a stronger cloud model.

Both are trained on scikit-learn's bundled `load_digits` (no download) with a fixed,
recorded split, exported to ONNX with skl2onnx, checked against scikit-learn with
onnxruntime, and written as bundles (`model.onnx` + `manifest.json`):

- edge: logistic regression on the 8x8 image average-pooled to 4x4. The pooling is folded
  into the coefficients, so the bundle takes the full 64 numbers and exports as a plain
  LogisticRegression.
- cloud: StandardScaler + MLP on the full 8x8 image, with softmax probabilities over all ten
  classes (the cloud re-ranks the edge's top-k labels by them).

Heavy imports (scikit-learn, skl2onnx, onnxruntime) happen inside the functions.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_node.storage.atomic_files import atomic_write
from router.errors import BundleError
from router.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    BundleManifest,
    InputSpec,
    parse_manifest,
    sha256_hex,
)

TASK = "digits"
LABELS = [str(d) for d in range(10)]
SPLIT_FILE = "digits-split.npz"
EDGE_VERSION = "digits-edge-1.0.0"
CLOUD_VERSION = "digits-cloud-1.0.0"
# Regularisation of the edge model, chosen so that it is clearly less accurate than the
# cloud model on the test split and the demo's policy has something to escalate.
EDGE_C = 0.05
ONNX_TOLERANCE = 1e-4
_OPSET = {"": 17, "ai.onnx.ml": 3}


@dataclass(frozen=True)
class DemoBuild:
    """What `build_demo_bundles` wrote and measured (accuracies measured with onnxruntime)."""

    edge_dir: Path
    cloud_dir: Path
    split_path: Path
    edge_accuracy: float
    cloud_accuracy: float
    edge_topk_recall: dict[int, float]  # k -> share of test items whose label is in top-k
    train_size: int
    test_size: int
    seed: int


def edge_bundle_dir(out_dir: Path) -> Path:
    """Where the edge digits bundle lives under `out_dir`."""
    return out_dir / "edge" / TASK


def cloud_bundle_dir(out_dir: Path) -> Path:
    """Where the cloud digits bundle lives under `out_dir`."""
    return out_dir / "cloud" / TASK


def bundles_present(out_dir: Path) -> bool:
    """True when both bundles (manifest + model) and the test split exist under `out_dir`.

    Manifests are written last, so their presence means the bundle was completely written.
    """
    files = [out_dir / SPLIT_FILE]
    for folder in (edge_bundle_dir(out_dir), cloud_bundle_dir(out_dir)):
        files += [folder / MODEL_FILE, folder / MANIFEST_FILE]
    return all(f.is_file() for f in files)


def read_demo_build(out_dir: Path) -> DemoBuild:
    """The DemoBuild recorded in the manifests of bundles already built under `out_dir`.

    Raises BundleError when a manifest is missing or invalid (no model is loaded).
    """
    edge_dir, cloud_dir = edge_bundle_dir(out_dir), cloud_bundle_dir(out_dir)
    edge = _read_manifest(edge_dir)
    cloud = _read_manifest(cloud_dir)
    return DemoBuild(
        edge_dir=edge_dir,
        cloud_dir=cloud_dir,
        split_path=out_dir / SPLIT_FILE,
        edge_accuracy=float(edge.metrics["test_accuracy"]),
        cloud_accuracy=float(cloud.metrics["test_accuracy"]),
        edge_topk_recall={k: float(edge.metrics[f"test_top{k}_recall"]) for k in (2, 3, 4)},
        train_size=int(edge.metrics["train_size"]),
        test_size=int(edge.metrics["test_size"]),
        seed=int(edge.metrics["split_seed"]),
    )


def _read_manifest(folder: Path) -> BundleManifest:
    path = folder / MANIFEST_FILE
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return parse_manifest(text, str(path))


def pooling_matrix() -> npt.NDArray[np.float64]:
    """The 64x16 matrix P with x16 = x64 @ P: 2x2 average pooling of a row-major 8x8 image."""
    p = np.zeros((64, 16))
    for r in range(8):
        for c in range(8):
            p[r * 8 + c, (r // 2) * 4 + c // 2] = 0.25
    return p


def load_test_split(out_dir: Path) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The recorded test split: inputs float32 [N, 64] and labels int64 [N] (digit = label).

    Raises FileNotFoundError when the demo bundles have not been built into `out_dir`.
    """
    with np.load(out_dir / SPLIT_FILE) as data:
        return data["x_test"].astype(np.float32), data["y_test"].astype(np.int64)


def build_demo_bundles(
    out_dir: Path,
    *,
    seed: int = 0,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> DemoBuild:
    """Train, export, verify and write both digits bundles and the test split.

    Deterministic for a given seed (same split, same models, same accuracies). Every file is
    written atomically (temp file + os.replace), manifests last. Raises RuntimeError if an
    ONNX export disagrees with scikit-learn by more than 1e-4 (nothing is written then).
    """
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    indices = np.arange(len(y))
    x_train, x_test, y_train, y_test, _, idx_test = train_test_split(
        x, y, indices, test_size=0.25, random_state=seed, stratify=y
    )
    pool = pooling_matrix()
    pooled = LogisticRegression(C=EDGE_C, max_iter=5000).fit(x_train @ pool, y_train)
    edge = fold_pooling(pooled, pool)
    cloud = make_pipeline(
        StandardScaler(),
        MLPClassifier(hidden_layer_sizes=(64,), max_iter=1000, random_state=seed),
    ).fit(x_train, y_train)

    x_test32 = x_test.astype(np.float32)
    edge_onnx = _export(edge, "digits_edge")
    cloud_onnx = _export(cloud, "digits_cloud")
    edge_probs = _check_onnx(edge_onnx, edge.predict_proba(x_test), x_test32, "edge")
    cloud_probs = _check_onnx(cloud_onnx, cloud.predict_proba(x_test), x_test32, "cloud")
    edge_acc = _accuracy(edge_probs, y_test)
    cloud_acc = _accuracy(cloud_probs, y_test)
    recall = {k: topk_recall(edge_probs, y_test, k) for k in (2, 3, 4)}

    out_dir.mkdir(parents=True, exist_ok=True)
    split_path = out_dir / SPLIT_FILE
    atomic_write(split_path, _npz_bytes(x_test32, y_test.astype(np.int64), idx_test, seed))
    created_at = clock().isoformat()
    common: dict[str, float | int | str] = {
        "split_seed": seed,
        "train_size": len(y_train),
        "test_size": len(y_test),
        "dataset": "sklearn.datasets.load_digits",
    }
    edge_metrics = (
        common | {"test_accuracy": edge_acc} | {f"test_top{k}_recall": v for k, v in recall.items()}
    )
    edge_dir = edge_bundle_dir(out_dir)
    cloud_dir = cloud_bundle_dir(out_dir)
    _write_bundle(
        edge_dir,
        edge_onnx,
        "edge",
        EDGE_VERSION,
        created_at,
        edge_metrics,
        "Logistic regression on the 8x8 digit average-pooled to 4x4 (pooling folded in).",
    )
    _write_bundle(
        cloud_dir,
        cloud_onnx,
        "cloud",
        CLOUD_VERSION,
        created_at,
        common | {"test_accuracy": cloud_acc},
        "StandardScaler + MLP(64) on the full 8x8 digit; softmax over all ten classes.",
    )
    return DemoBuild(
        edge_dir=edge_dir,
        cloud_dir=cloud_dir,
        split_path=split_path,
        edge_accuracy=edge_acc,
        cloud_accuracy=cloud_acc,
        edge_topk_recall=recall,
        train_size=len(y_train),
        test_size=len(y_test),
        seed=seed,
    )


def fold_pooling(pooled_model: Any, pool: npt.NDArray[np.float64]) -> Any:
    """A copy of a LogisticRegression fitted on `x @ pool` that takes `x` directly.

    logits = (x @ P) @ W.T + b = x @ (W @ P.T).T + b, so coef_64 = coef_16 @ P.T.
    """
    folded = copy.deepcopy(pooled_model)
    folded.coef_ = pooled_model.coef_ @ pool.T
    folded.n_features_in_ = pool.shape[0]
    return folded


def topk_recall(probs: npt.NDArray[Any], y_true: npt.NDArray[Any], k: int) -> float:
    """Share of rows whose true class index is among the k most probable columns."""
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float(np.mean((top == y_true[:, None]).any(axis=1)))


def _accuracy(probs: npt.NDArray[Any], y_true: npt.NDArray[Any]) -> float:
    return float(np.mean(np.argmax(probs, axis=1) == y_true))


def _export(model: Any, name: str) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(model): {"zipmap": False}},
        target_opset=_OPSET,
        name=name,  # fixed graph name (default is a random uuid) keeps the bytes reproducible
    )
    data: bytes = onx.SerializeToString()
    return data


def _check_onnx(
    model_bytes: bytes, expected: npt.NDArray[Any], x: npt.NDArray[np.float32], role: str
) -> npt.NDArray[np.float32]:
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    probs: npt.NDArray[np.float32] = session.run(["probabilities"], {"input": x})[0]
    gap = float(np.abs(probs - expected).max())
    if gap > ONNX_TOLERANCE:
        raise RuntimeError(f"{role} ONNX export differs from scikit-learn by {gap:.2e}")
    return probs


def _npz_bytes(
    x_test: npt.NDArray[np.float32],
    y_test: npt.NDArray[np.int64],
    idx_test: npt.NDArray[Any],
    seed: int,
) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, x_test=x_test, y_test=y_test, test_indices=idx_test, seed=np.int64(seed))
    return buf.getvalue()


def _write_bundle(
    folder: Path,
    model_bytes: bytes,
    role: str,
    version: str,
    created_at: str,
    metrics: dict[str, float | int | str],
    description: str,
) -> None:
    manifest = BundleManifest.model_validate(
        {
            "task": TASK,
            "version": version,
            "role": role,
            "created_at": created_at,
            "input": InputSpec(
                name="input", shape=[None, 64], dtype="float32", min_value=0, max_value=16
            ),
            "labels": LABELS,
            "files": {MODEL_FILE: sha256_hex(model_bytes)},
            "description": description,
            "metrics": metrics,
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / MODEL_FILE, model_bytes)
    text = json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n"
    atomic_write(folder / MANIFEST_FILE, text.encode())
