"""One bundle validation at every gate: each kind of broken bundle is refused by `model
verify`, `policy check`, `edge serve` and `model install` with the same reason and no
traceback (the real CLI), and a running node keeps serving its version through every
refused install (a real edge node over 127.0.0.1)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from edgeroute import processes
from edgeroute.bundle_tools import keygen
from edgeroute.cli import main
from tests.model_update_support import edit_coefficients, nan, sign_unchecked, trusted_policy

Edit = Callable[[dict[str, object], Path], None]


def _labels(labels: list[str]) -> Edit:
    def edit(manifest: dict[str, object], _: Path) -> None:
        manifest["labels"] = labels

    return edit


def _field(path: str, value: object) -> Edit:
    def edit(manifest: dict[str, object], _: Path) -> None:
        *parents, last = path.split(".")
        node = manifest
        for p in parents:
            node = node[p]  # type: ignore[assignment]
        node[last] = value

    return edit


def _nan_model(manifest: dict[str, object], folder: Path) -> None:
    model = folder / "model.onnx"
    model.write_bytes(edit_coefficients(model.read_bytes(), nan))


def _map_output(manifest: dict[str, object], folder: Path) -> None:
    """skl2onnx's default export of a digits classifier: probabilities as a ZipMap."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    clf = LogisticRegression(max_iter=30).fit(x[:300], y[:300])
    onx = convert_sklearn(clf, initial_types=[("input", FloatTensorType([None, 64]))])
    (folder / "model.onnx").write_bytes(onx.SerializeToString())
    manifest["output"] = {"name": "output_probability", "kind": "probabilities"}


DIGITS = [str(i) for i in range(10)]
BROKEN: dict[str, tuple[Edit, str]] = {
    "labels_swapped": (
        _labels(["1", "0", *DIGITS[2:]]),
        "are in another order than the graph's classes",
    ),
    "duplicate_label": (_labels(["0", "0", *DIGITS[2:]]), "labels must be unique"),
    "map_output": (_map_output, "not a tensor of probabilities"),
    "width": (_labels(DIGITS[:9]), "has 10 classes, the manifest lists 9 labels"),
    "input_name": (
        _field("input.name", "pixels"),
        "the graph's input is named 'input', the manifest says 'pixels'",
    ),
    "nan_output": (_nan_model, "non-finite probabilities"),
    "task_mismatch": (_field("task", "digitz"), "the bundle serves task 'digitz', not 'digits'"),
}


@pytest.fixture(scope="module")
def gates(demo_bundles_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A signing key, the signed demo edge bundle (`base`) with its trusted policy, and one
    signed broken bundle per kind."""
    root = tmp_path_factory.mktemp("gates")
    _, pub, _ = keygen(root / "keys" / "k")
    key = root / "keys" / "k.key"
    out = {"pub": pub, "key": key}
    out["base"] = sign_unchecked(demo_bundles_dir / "edge" / "digits", root / "base", key, "base-1")
    for name, (edit, _) in BROKEN.items():
        draft = root / "drafts" / name
        shutil.copytree(demo_bundles_dir / "edge" / "digits", draft)
        manifest = json.loads((draft / "manifest.json").read_text())
        edit(manifest, draft)
        (draft / "manifest.json").write_text(json.dumps(manifest))
        out[name] = sign_unchecked(draft, root / "broken" / name, key, f"broken-{name}")
    return out


def _cli(*args: str) -> tuple[int, str]:
    """Run the real CLI in process: exit code and everything it printed."""
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_every_gate_refuses_a_broken_bundle_with_the_same_reason(
    gates: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """`model verify`, `policy check`, `edge serve` and `model install` each refuse the
    broken bundle, naming the same reason, with their documented exit code and no
    traceback."""
    monkeypatch.setenv("EDGEROUTE_TEST_TOKEN", "t")
    reason = BROKEN[kind][1]
    bundle = gates[kind]
    broken_policy = tmp_path / "broken.yaml"
    broken_policy.write_text(trusted_policy(bundle, gates["pub"]))
    good_policy = tmp_path / "good.yaml"
    good_policy.write_text(trusted_policy(gates["base"], gates["pub"]))
    port = str(processes.free_port())
    runs = {
        "verify": (
            1,
            _cli("model", "verify", str(bundle), "--pubkey", str(gates["pub"]), "--task", "digits"),
        ),
        "policy check": (1, _cli("policy", "check", str(broken_policy))),
        "edge serve": (
            2,
            _cli(
                "edge",
                "serve",
                "--policy",
                str(broken_policy),
                "--data-dir",
                str(tmp_path / "serve"),
                "--port",
                port,
            ),
        ),
        "install": (
            1,
            _cli(
                "model",
                "install",
                str(bundle),
                "--data-dir",
                str(tmp_path / "node"),
                "--policy",
                str(good_policy),
            ),
        ),
    }
    for gate, (want, (code, output)) in runs.items():
        assert code == want, (gate, code, output)
        assert reason in output, (gate, output)
        assert "Traceback" not in output, (gate, output)


def test_a_running_node_keeps_serving_through_refused_installs(
    gates: dict[str, Path], tmp_path: Path
) -> None:
    """A real edge node answers 200 with its version before and after every broken bundle
    is refused by `model install` on its data dir."""
    policy = tmp_path / "good.yaml"
    policy.write_text(trusted_policy(gates["base"], gates["pub"]))
    data, port = tmp_path / "node", processes.free_port()
    argv = processes.edgeroute_cmd(
        "edge", "serve", "--policy", str(policy), "--data-dir", str(data), "--port", str(port)
    )
    log = tmp_path / "edge.log"
    node = processes.start(argv, log, {"EDGEROUTE_TEST_TOKEN": "t"})
    url = f"http://127.0.0.1:{port}"
    body = {"task": "digits", "inputs": np.zeros(64).tolist()}
    try:
        processes.wait_http(f"{url}/readyz", node, log_path=log)
        assert httpx.post(f"{url}/v1/infer", json=body).json()["model_version"] == "base-1"
        for kind in BROKEN:
            code, output = _cli("model", "install", str(gates[kind]), "--data-dir", str(data),
                                "--policy", str(policy))  # fmt: skip
            assert code == 1, (kind, output)
            answer = httpx.post(f"{url}/v1/infer", json=body)
            assert answer.status_code == 200, answer.text
            assert answer.json()["model_version"] == "base-1"
    finally:
        processes.stop(node)
