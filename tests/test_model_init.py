"""`edgeroute model init`: a complete, valid bundle from an ONNX file, or a refusal that
says what is missing and how to fix it (real onnxruntime sessions, the real CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeroute.cli import main
from runtime.bundle import load_bundle


def _sklearn_onnx(tmp: Path, *, zipmap: bool) -> Path:
    """An iris classifier with string labels exported by skl2onnx."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    clf = LogisticRegression(max_iter=200).fit(x.astype(np.float32), names)
    options = None if zipmap else {id(clf): {"zipmap": False}}
    onx = to_onnx(clf, x[:1].astype(np.float32), options=options)
    path = tmp / ("zipmap.onnx" if zipmap else "iris.onnx")
    path.write_bytes(onx.SerializeToString())
    return path


def _bare_onnx(tmp: Path) -> Path:
    """A graph without class labels (as torch.onnx writes): softmax(x @ W), 4 -> 3."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.eye(4, 3, dtype=np.float32), name="W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["z"]),
         helper.make_node("Softmax", ["z"], ["probs"], axis=1)],
        "bare",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3])],
        [w],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp / "bare.onnx"
    path.write_bytes(model.SerializeToString())
    onnx.checker.check_model(model)
    return path


def _init(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["model", "init", *args])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


def test_init_reads_input_output_and_labels_from_an_sklearn_graph(tmp_path: Path) -> None:
    """From skl2onnx's `zipmap: False` export, init writes a bundle the one loader accepts:
    input name, shape and dtype, the probability output and the string labels in the
    graph's order, and the range taken from a sample file."""
    sample = tmp_path / "sample.csv"
    sample.write_text("a,b,c,d\n0.1,2,3,4\n7.9,4.4,6.9,2.5\n")
    code, out = _init(str(_sklearn_onnx(tmp_path, zipmap=False)), str(tmp_path / "b"),
                      "--task", "iris", "--sample", str(sample))  # fmt: skip
    assert code == 0, out
    m = load_bundle(tmp_path / "b", task="iris", role="edge").manifest
    assert m.labels == ["setosa", "versicolor", "virginica"]
    assert (m.input.name, m.input.shape, m.input.dtype) == ("X", [None, 4], "float32")
    assert m.output.name == "probabilities"
    assert (m.input.min_value, m.input.max_value) == (pytest.approx(0.1), pytest.approx(7.9))


def test_init_refuses_the_zipmap_export_with_the_fix(tmp_path: Path) -> None:
    """skl2onnx's default export (probabilities as a sequence of maps) is refused, exit 2,
    naming the `zipmap: False` option; no folder is left behind."""
    code, out = _init(str(_sklearn_onnx(tmp_path, zipmap=True)), str(tmp_path / "b"),
                      "--task", "iris")  # fmt: skip
    assert code == 2 and "'zipmap': False" in out, out
    assert not (tmp_path / "b").exists()


def test_init_needs_labels_for_a_graph_without_classes(tmp_path: Path) -> None:
    """A graph without class labels is refused unless --labels names them (one per line),
    and a labels file of the wrong length is refused by the graph check."""
    bare = _bare_onnx(tmp_path)
    code, out = _init(str(bare), str(tmp_path / "b"), "--task", "t", "--range", "0:1")
    assert code == 2 and "pass --labels FILE" in out, out
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    code, out = _init(str(bare), str(tmp_path / "b"), "--task", "t", "--range", "0:1",
                      "--labels", str(labels))  # fmt: skip
    assert code == 0, out
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["labels"] == ["cat", "dog", "bird"]
    assert (manifest["input"]["min_value"], manifest["input"]["max_value"]) == (0.0, 1.0)
    labels.write_text("cat\ndog\n")
    code, out = _init(str(bare), str(tmp_path / "c"), "--task", "t", "--labels", str(labels))
    assert code == 2 and "has 3 classes, the manifest lists 2 labels" in out, out


def test_pack_computes_every_hash_itself(tmp_path: Path) -> None:
    """`model pack` signs a source folder whose manifest lists no hashes at all."""
    code, out = _init(str(_sklearn_onnx(tmp_path, zipmap=False)), str(tmp_path / "b"),
                      "--task", "iris", "--range", "0:8")  # fmt: skip
    assert code == 0, out
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    del manifest["files"]
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    runner = CliRunner()
    assert runner.invoke(main, ["model", "keygen", str(tmp_path / "k")]).exit_code == 0
    packed = runner.invoke(
        main, ["model", "pack", str(tmp_path / "b"), str(tmp_path / "s"), "--key",
               str(tmp_path / "k.key")],
    )  # fmt: skip
    assert packed.exit_code == 0, packed.output
    verified = runner.invoke(
        main, ["model", "verify", str(tmp_path / "s"), "--pubkey", str(tmp_path / "k.pub"),
               "--task", "iris"],
    )  # fmt: skip
    assert verified.exit_code == 0, verified.output
