"""Model bundles: read a bundle folder, verify it, open an onnxruntime session.

The one loader of the edge node and the cloud service, so both refuse a bad bundle with
the same message. A bundle is `manifest.json` + `model.onnx` (see router.manifest).
Loading checks, in order: the folder and files exist, the manifest validates, the model's
sha256 matches, onnxruntime accepts the bytes, and the graph's input/output agree with the
manifest. Any fault raises router.errors.BundleError naming the path and the reason;
nothing is half-loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from router.errors import BundleError
from router.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    BundleManifest,
    GraphTensor,
    check_file_hash,
    check_graph_io,
    parse_manifest,
)
from router.signing import SIGNATURE_FILE, verify_manifest_signature

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
    path: str | Path, trust: BundleTrust | None = None, *, intra_op_threads: int = 1
) -> LoadedBundle:
    """Load and verify the bundle folder at `path`; its session runs each call on
    `intra_op_threads` threads (see `session_options`).

    Raises BundleError (message names the path and the reason) when the folder or a file is
    missing or unreadable, the manifest is invalid (field = the offending manifest field),
    the model's sha256 differs from the manifest, onnxruntime rejects the model, or the
    graph's input/output do not match the manifest. With `trust`, a signed bundle must
    verify against a trusted key, and `require_signed` refuses unsigned bundles (codes in
    router.signing); every file the manifest lists must then match its sha256.
    Thread-safe (reads files, shares nothing).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise BundleError(f"{folder}: no such bundle folder")
    manifest_text = _read(folder / MANIFEST_FILE)
    signed_by = _check_signature(folder, manifest_text, trust)
    manifest = parse_manifest(manifest_text, str(folder / MANIFEST_FILE))
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
    return LoadedBundle(manifest=manifest, session=session, path=folder, signed_by=signed_by)


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
