"""Model bundles: read a bundle folder, verify it, open an onnxruntime session.

The one loader of the edge node and the cloud service, so both refuse a bad bundle with
the same message. A bundle is `manifest.json` + `model.onnx` (see router.manifest).
`load_bundle` is the one bundle validation: `edgeroute model init`, `model pack`, `model
verify`, `policy check`, the edge node (start, reload, `model install`, the model
updater) and the cloud's loader all call it, so they accept and refuse the same bundles
with the same message. Checks, in order: the folder and files exist, the signature (with
a trust), the manifest validates (labels unique), the bundle serves the expected task and
role, the model's sha256 matches, onnxruntime accepts the bytes, the graph's input and
output agree with the manifest (a probability tensor as wide as the labels), the labels
follow the graph's class order where the graph carries one, and a smoke run on inputs
drawn from the manifest's ranges gives finite probabilities summing to 1. Any fault
raises router.errors.BundleError naming the path and the reason; nothing is half-loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from router.errors import BundleError
from router.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    BundleManifest,
    GraphTensor,
    InputSpec,
    check_bundle_role,
    check_class_labels,
    check_file_hash,
    check_graph_io,
    parse_manifest,
)
from router.model_updates import check_probabilities
from router.signing import SIGNATURE_FILE, verify_manifest_signature
from runtime.graph_labels import graph_class_labels

if TYPE_CHECKING:
    import onnxruntime
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


@dataclass(frozen=True)
class BundleTrust:
    """Which bundles may be loaded: `require_signed` refuses unsigned ones; `keys` maps
    key_id -> trusted Ed25519 public key (a signed bundle must verify against one of them)."""

    require_signed: bool = False
    keys: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadedBundle:
    """A verified bundle: its manifest, a ready onnxruntime session and its folder.

    The session is safe to share between threads (InferenceSession.run is thread-safe).
    """

    manifest: BundleManifest
    session: onnxruntime.InferenceSession
    path: Path
    signed_by: str | None = None


def load_bundle(
    path: str | Path,
    trust: BundleTrust | None = None,
    *,
    task: str | None = None,
    role: str | None = None,
    intra_op_threads: int = 1,
) -> LoadedBundle:
    """Load and verify the bundle folder at `path` (every check of the module doc); its
    session runs each call on `intra_op_threads` threads (see `session_options`).

    Raises BundleError (message names the path and the reason; `field` the manifest field
    at fault where there is one) when the folder or a file is missing or unreadable, the
    manifest is invalid, the bundle is not for `task` or not in `role` (None: any), the
    model's sha256 differs from the manifest, onnxruntime rejects the model, the graph's
    input/output do not match the manifest, the labels are not the graph's classes in
    order, or the smoke run fails (code `smoke_failed`). With `trust`, a signed bundle
    must verify against a trusted key, and `require_signed` refuses unsigned bundles
    (codes in router.signing); every file the manifest lists must then match its sha256.
    Thread-safe (reads files, shares nothing).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise BundleError(f"{folder}: no such bundle folder")
    manifest_text = _read(folder / MANIFEST_FILE)
    signed_by = _check_signature(folder, manifest_text, trust)
    manifest = parse_manifest(manifest_text, str(folder / MANIFEST_FILE))
    check_bundle_role(manifest, str(folder), task=task, role=role)
    model_bytes = _read(folder / MODEL_FILE)
    check_file_hash(manifest, MODEL_FILE, model_bytes)
    if signed_by is not None:
        for name in manifest.files:
            if name != MODEL_FILE:
                check_file_hash(manifest, name, _read(folder / name))
    session = _open_session(model_bytes, folder / MODEL_FILE, intra_op_threads)
    check_graph_io(
        manifest,
        [GraphTensor(t.name, tuple(t.shape), t.type) for t in session.get_inputs()],
        [GraphTensor(t.name, tuple(t.shape), t.type) for t in session.get_outputs()],
        str(folder),
    )
    check_class_labels(manifest, graph_class_labels(model_bytes, str(folder)), str(folder))
    _smoke_run(session, manifest, str(folder))
    return LoadedBundle(manifest=manifest, session=session, path=folder, signed_by=signed_by)


def smoke_inputs(spec: InputSpec) -> npt.NDArray[np.generic]:
    """A small batch for a smoke inference: items filled with the lowest, middle and highest
    allowed value of `spec` (0, 0.5, 1 when it sets no limits), in its dtype and shape."""
    lo = spec.min_value if spec.min_value is not None else 0.0
    hi = spec.max_value if spec.max_value is not None else max(lo, 0.0) + 1.0
    item_shape = tuple(d for d in spec.shape[1:] if d is not None)
    values = [lo, (lo + hi) / 2.0, hi]
    rows = [np.full(item_shape, v, dtype=np.float64) for v in values]
    return np.stack(rows).astype(np.dtype(spec.dtype))


def _smoke_run(
    session: onnxruntime.InferenceSession, manifest: BundleManifest, source: str
) -> None:
    """Run `session` on `smoke_inputs` and check one probability vector per item (finite,
    in [0, 1], summing to 1). Raises BundleError (code `smoke_failed`)."""
    x = smoke_inputs(manifest.input)
    try:
        probs = session.run([manifest.output.name], {manifest.input.name: x})[0]
    except Exception as exc:  # onnxruntime raises several unrelated types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(
            f"{source}: the smoke run on inputs from the manifest's ranges failed ({reason})",
            code="smoke_failed",
        ) from None
    flat = np.asarray(probs, dtype=np.float64)
    if flat.ndim != 2 or flat.shape[0] != len(x):
        raise BundleError(
            f"{source}: the smoke run on {len(x)} items returned shape {list(flat.shape)}; "
            f"expected [{len(x)}, {len(manifest.labels)}]",
            code="smoke_failed",
        )
    check_probabilities(flat.tolist(), len(manifest.labels), source)


def _check_signature(folder: Path, manifest_text: bytes, trust: BundleTrust | None) -> str | None:
    if trust is None:
        return None
    sig_path = folder / SIGNATURE_FILE
    sig = _read(sig_path) if sig_path.exists() else None
    if sig is None and not trust.require_signed:
        return None
    return verify_manifest_signature(manifest_text, sig, trust.keys, str(folder))


def _read(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{file}: missing from the bundle") from None
    except OSError as exc:
        raise BundleError(f"{file}: cannot be read ({exc.strerror or exc})") from None


def session_options(intra_op_threads: int = 1) -> onnxruntime.SessionOptions:
    """The options of every session `load_bundle` opens; public so benchmark baselines can
    open the same session. A fresh object per call.

    `intra_op_threads` threads per run (default 1) and one inter-op thread with sequential
    execution: the demo models are tiny, so thread hand-offs cost more than they save, and
    request-level concurrency comes from the server's threads (each `run` uses one core);
    a cloud with bigger models may give a run more threads. All graph optimisations are on.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: no warnings on stderr per load
    return opts


def _open_session(
    model_bytes: bytes, source: Path, intra_op_threads: int
) -> onnxruntime.InferenceSession:
    import onnxruntime as ort

    opts = session_options(intra_op_threads)
    try:
        return ort.InferenceSession(
            model_bytes, sess_options=opts, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises several unrelated types (Fail, RuntimeError)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{source}: onnxruntime cannot load the model ({reason})") from None
