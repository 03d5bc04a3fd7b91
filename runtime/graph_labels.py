"""The class labels an ONNX graph carries, read with `onnx`.

Exporters of classifiers write the classes into the graph: skl2onnx as the
`classlabels_strings` / `classlabels_int64s` attribute of its ZipMap node, as the
`classlabels_*` attribute of an `ai.onnx.ml` classifier node (LinearClassifier,
TreeEnsembleClassifier, SVMClassifier, ...), or as a `classes` initializer read by
ArrayFeatureExtractor (MLPClassifier with `zipmap: False`). Graphs exported from torch or
TensorFlow carry none; their labels come from the user. `onnx` is imported only here.
"""

from __future__ import annotations

from typing import Any

from router.errors import BundleError

_LABEL_ATTRIBUTES = ("classlabels_strings", "classlabels_int64s", "classlabels_ints")
_CLASSES_INITIALIZER = "classes"


def graph_class_labels(model_bytes: bytes, source: str) -> tuple[str, ...] | None:
    """The class labels the serialized ONNX model `model_bytes` carries, in the order of
    its probability columns (integers as decimal text), or None if it carries none.
    External data is not loaded. Raises BundleError naming `source` if the bytes are not
    an ONNX model. Thread-safe (a pure function of the bytes)."""
    import onnx

    try:
        model = onnx.load_model_from_string(model_bytes)
    except Exception as exc:  # protobuf's DecodeError, onnx's ValueError
        raise BundleError(f"{source}: not an ONNX model ({exc})") from None
    return _class_labels(model.graph)


def _class_labels(graph: Any) -> tuple[str, ...] | None:
    """The first class list found: a ZipMap node, then a classifier node, then a `classes`
    initializer; labels as strings (integers in decimal)."""
    nodes = sorted(graph.node, key=lambda n: n.op_type != "ZipMap")
    for node in nodes:
        if node.domain != "ai.onnx.ml":
            continue
        for attr in node.attribute:
            if attr.name in _LABEL_ATTRIBUTES:
                values = attr.strings or attr.ints
                if values:
                    return tuple(_text(v) for v in values)
    for init in graph.initializer:
        if init.name == _CLASSES_INITIALIZER:
            from onnx import numpy_helper

            return tuple(_text(v) for v in numpy_helper.to_array(init).ravel().tolist())
    return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
