"""Helpers for the model update tests: new bundle versions of the demo edge model (same,
disagreeing, NaN-producing, broken), a trusted policy, and concurrent HTTP traffic."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import httpx
import numpy as np
import numpy.typing as npt

from edgeroute.bundle_tools import keygen
from router.manifest import MANIFEST_FILE, sha256_hex
from router.signing import SIGNATURE_FILE, key_id_of, public_key_from_pem, sign_manifest
from runtime.bundle import BundleTrust
from tests.edge_fixtures import policy_head
from tests.waiting import wait_until

CoefEdit = Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]


def edit_coefficients(model_bytes: bytes, edit: CoefEdit) -> bytes:
    """The demo edge model (one LinearClassifier) with its [classes, features] coefficient
    matrix replaced by `edit(coefficients)`."""
    import onnx

    m = onnx.load_from_string(model_bytes)
    node = next(n for n in m.graph.node if n.op_type == "LinearClassifier")
    attr = next(a for a in node.attribute if a.name == "coefficients")
    coefs = np.array(attr.floats, dtype=np.float64).reshape(10, -1)
    del attr.floats[:]
    attr.floats.extend(edit(coefs).ravel().tolist())
    data: bytes = m.SerializeToString()
    return data


def rolled(coefs: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Class i gets the weights of class i-1: the model answers a shifted label."""
    return np.roll(coefs, 1, axis=0)


def nan(coefs: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Every weight NaN: the model loads and runs but returns NaN probabilities."""
    return np.full_like(coefs, np.nan)


def make_version(
    src: Path,
    out: Path,
    version: str,
    key: Path | None,
    *,
    model: bytes | None = None,
    labels: list[str] | None = None,
) -> Path:
    """A new bundle `out` from the bundle `src` with `version`, optionally another
    `model.onnx` and `labels`; signed with `key` (hashes recomputed), unsigned if None."""
    stage = out.parent / f"src-{out.name}"
    shutil.copytree(src, stage)
    if model is not None:
        (stage / "model.onnx").write_bytes(model)
    manifest = json.loads((stage / "manifest.json").read_text())
    if labels is not None:
        manifest["labels"] = labels
    if key is not None:
        (stage / "manifest.json").write_text(json.dumps(manifest))
        sign_unchecked(stage, out, key, version)
    else:
        manifest["version"] = version
        (stage / "manifest.json").write_text(json.dumps(manifest))
        shutil.copytree(stage, out)
    shutil.rmtree(stage)
    return out


def sign_unchecked(src: Path, out: Path, key: Path, version: str) -> Path:
    """What `edgeroute model pack` writes (every file's sha256, `version`, the signature)
    *without* its validation: for tests that need a well-signed bundle the checks refuse."""
    shutil.copytree(src, out)
    (out / SIGNATURE_FILE).unlink(missing_ok=True)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    files = sorted(p.name for p in out.iterdir() if p.name != MANIFEST_FILE)
    manifest.update(version=version, files={n: sha256_hex((out / n).read_bytes()) for n in files})
    text = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    (out / MANIFEST_FILE).write_bytes(text)
    (out / SIGNATURE_FILE).write_bytes(sign_manifest(text, key.read_bytes()))
    return out


V1, V2, V3 = "digits-edge-1", "digits-edge-2", "digits-edge-3-rolled"


def build_versions(src: Path, d: Path) -> dict[str, Path]:
    """Signed versions of the demo edge bundle `src` in `d`: v1 (the policy's), v2 (same
    weights), v3 (labels shifted: disagrees), and broken ones (NaN output, not ONNX,
    truncated, labels reversed); plus the key pair and an unsigned v4."""
    key, pub, _ = keygen(d / "keys" / "release")
    onnx_bytes = (src / "model.onnx").read_bytes()
    out = {"key": key, "pub": pub}
    out["v1"] = make_version(src, d / V1, V1, key)
    out["v2"] = make_version(src, d / V2, V2, key)
    out["v3"] = make_version(src, d / V3, V3, key, model=edit_coefficients(onnx_bytes, rolled))
    out["nan"] = make_version(
        src, d / "nan", "digits-edge-nan", key, model=edit_coefficients(onnx_bytes, nan)
    )
    out["broken"] = make_version(  # hashes and signature fine, not an ONNX model
        src, d / "broken", "digits-edge-broken", key, model=b"\x08\x07garbage" * 64
    )
    out["truncated"] = make_version(src, d / "truncated", "digits-edge-truncated", key)
    model = out["truncated"] / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    out["labels"] = make_version(
        src, d / "labels", "digits-edge-labels", key, labels=[str(9 - i) for i in range(10)]
    )
    out["unsigned"] = make_version(src, d / "unsigned", "digits-edge-4", None)
    return out


def trust_of(versions: dict[str, Path]) -> BundleTrust:
    """The trust that accepts bundles signed by `versions`' key."""
    pub = public_key_from_pem(versions["pub"].read_bytes())
    return BundleTrust(True, {key_id_of(pub): pub})


def trusted_policy(bundle: Path, pub: Path, canary: str = "") -> str:
    """An edge-only `digits` task on `bundle` (every answer comes from the edge model, no
    cloud needed) that requires bundles signed by `pub`; `canary` is the rule's flow map."""
    rule = f"    canary: {canary}\n" if canary else ""
    return (
        policy_head()
        + f"trust:\n  require_signed: true\n  trusted_keys: [{pub}]\n"
        + f"tasks:\n  digits:\n    edge_bundle: {bundle}\n    threshold: 0.5\n"
        + "    placement: edge_only\n    deadline_ms: 5000\n"
        + rule
    )


class Traffic:
    """`clients` threads posting `/v1/infer` for the digits inputs `xs` in a loop until the
    block ends; `seen[i]` is client i's list of (status, model_version, label)."""

    def __init__(self, url: str, xs: npt.NDArray[np.float32], clients: int = 3) -> None:
        self._url = url
        self._xs = [x.tolist() for x in xs]
        self._stop = threading.Event()
        self.seen: list[list[tuple[int, str | None, str | None]]] = [[] for _ in range(clients)]
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)
        ]

    def _run(self, i: int) -> None:
        with httpx.Client(base_url=self._url, timeout=30) as http:
            n = i
            while not self._stop.is_set():
                x = self._xs[n % len(self._xs)]
                n += 1
                try:
                    r = http.post("/v1/infer", json={"task": "digits", "inputs": x})
                    body = r.json()
                    self.seen[i].append(
                        (r.status_code, body.get("model_version"), body.get("label"))
                    )
                except httpx.HTTPError as exc:
                    self.seen[i].append((0, type(exc).__name__, None))

    def mark(self) -> list[int]:
        """How many answers each client has so far (for `wait_each`)."""
        return [len(client) for client in self.seen]

    def wait_each(self, version: str, mark: list[int], timeout_s: float = 20.0) -> bool:
        """Wait until every client got an answer from `version` after `mark` (True); raises
        AssertionError after `timeout_s`."""
        return wait_until(
            lambda: all(
                any(v == version for _, v, _ in client[n:])
                for client, n in zip(self.seen, mark, strict=True)
            ),
            timeout_s,
            0.05,
            f"every client to get an answer from {version}",
        )

    def all(self) -> list[tuple[int, str | None, str | None]]:
        """Every answer so far, all clients."""
        return [a for client in self.seen for a in list(client)]

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
