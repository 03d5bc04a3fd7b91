"""`edgeroute model init`: a bundle folder with a complete manifest, made from an ONNX file.

What the manifest needs is read from the graph (input name, shape and dtype; the output
of probabilities; the class labels where the exporter wrote them, as skl2onnx does) or
given by the user (`labels`, `value_range` or a `sample` of inputs). The folder is
written only if it passes the one bundle validation (`runtime.bundle.load_bundle`), so a
bundle `init` writes is one every gate accepts.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeroute.bundle_tools import publish_bundle
from router.errors import BundleError, ConfigError
from router.manifest import MANIFEST_FILE, MODEL_FILE, sha256_hex
from runtime.bundle import session_options
from runtime.graph_labels import graph_class_labels

_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(int64)": "int64"}
_ZIPMAP_FIX = (
    "skl2onnx writes a sequence of maps (its ZipMap) by default: export with "
    "to_onnx(model, X[:1], options={id(model): {'zipmap': False}})"
)


@dataclass(frozen=True)
class InitOptions:
    """What the user says about the model: its task, role and version; its labels file
    (one label per line, or a JSON list), when the graph carries none; its value range
    (`value_range`) or a sample of inputs to take the range from (.npy, or .csv of numbers
    with an optional header row); the output to use when the graph has several."""

    task: str
    role: str = "edge"
    version: str = "1"
    labels_file: Path | None = None
    value_range: tuple[float, float] | None = None
    sample: Path | None = None
    output: str | None = None
    description: str = ""


def init_bundle(
    onnx_file: Path, out: Path, opts: InitOptions, now: dt.datetime | None = None
) -> Path:
    """Write the bundle folder `out` (model.onnx + manifest.json) for `onnx_file`.

    Written atomically (staged in a sibling folder, validated with `load_bundle`, then
    renamed). Raises ConfigError for a file it cannot read or an `out` that exists, and
    BundleError naming what the model lacks and how to fix it (a sequence-of-maps output,
    no labels, labels unlike the graph's classes, a failing smoke run, ...).
    """
    if out.exists():
        raise ConfigError(f"{out} already exists (choose a new folder)", field="out")
    model_bytes = _read(onnx_file, "onnx file")
    manifest = _manifest(model_bytes, onnx_file, opts, now or dt.datetime.now(dt.UTC))
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    files = {MODEL_FILE: model_bytes, MANIFEST_FILE: text.encode()}
    publish_bundle(out, files, shown_as=out, task=opts.task, role=opts.role)
    return out


def _manifest(
    model_bytes: bytes, source: Path, opts: InitOptions, now: dt.datetime
) -> dict[str, Any]:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(
            model_bytes, sess_options=session_options(), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises several unrelated types
        raise BundleError(f"{source}: onnxruntime cannot load the model ({exc})") from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise BundleError(
            f"{source}: the graph has {len(inputs)} inputs {[i.name for i in inputs]}; a "
            "bundle's model takes exactly one input tensor (concatenate the features)",
            field="input.name",
        )
    graph_in = inputs[0]
    dtype = _DTYPES.get(graph_in.type)
    if dtype is None:
        raise BundleError(
            f"{source}: the graph's input is {graph_in.type}; supported: {sorted(_DTYPES)}",
            field="input.dtype",
        )
    dims = list(graph_in.shape)[1:]
    if not all(isinstance(d, int) for d in dims):
        raise BundleError(
            f"{source}: the graph's input shape is {list(graph_in.shape)}; every axis but "
            "the first (the batch) must have a fixed size",
            field="input.shape",
        )
    output = _probability_output(session, source, opts.output)
    labels = _labels(graph_class_labels(model_bytes, str(source)), opts.labels_file, source)
    lo, hi = _range(opts)
    return {
        "format_version": 1,
        "task": opts.task,
        "version": opts.version,
        "role": opts.role,
        "created_at": now.isoformat(),
        "description": opts.description,
        "input": {
            "name": graph_in.name,
            "shape": [None, *dims],
            "dtype": dtype,
            "min_value": lo,
            "max_value": hi,
        },
        "output": {"name": output, "kind": "probabilities"},
        "labels": labels,
        "files": {MODEL_FILE: sha256_hex(model_bytes)},
    }


def _probability_output(session: Any, source: Path, wanted: str | None) -> str:
    """The name of the graph's probability output: `wanted`, else the one float tensor of
    rank 2 (preferring a name with "prob" in it)."""
    outputs = session.get_outputs()
    if wanted is not None:
        if wanted not in [o.name for o in outputs]:
            raise BundleError(
                f"{source}: the graph has no output {wanted!r} (outputs: "
                f"{[o.name for o in outputs]})",
                field="output.name",
            )
        return wanted
    tensors = [
        o for o in outputs if o.type in ("tensor(float)", "tensor(double)") and len(o.shape) == 2
    ]
    probable = [o for o in tensors if "prob" in o.name.lower()] or tensors
    if len(probable) == 1:
        return str(probable[0].name)
    if any(o.type.startswith(("seq(", "map(")) for o in outputs):
        raise BundleError(
            f"{source}: the graph's probabilities are a sequence of maps, not a tensor; "
            + _ZIPMAP_FIX,
            field="output.name",
        )
    raise BundleError(
        f"{source}: cannot tell which output holds the probabilities (outputs: "
        f"{[(o.name, o.type) for o in outputs]}); name it with --output",
        field="output.name",
    )


def _labels(
    from_graph: tuple[str, ...] | None, labels_file: Path | None, source: Path
) -> list[str]:
    if labels_file is None:
        if from_graph is None:
            raise BundleError(
                f"{source}: the graph carries no class labels; pass --labels FILE (one label "
                "per line, in the order of the probability columns)",
                field="labels",
            )
        return list(from_graph)
    text = _read(labels_file, "labels file").decode("utf-8", errors="replace")
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        parsed = [line.strip() for line in text.splitlines() if line.strip()]
    if not isinstance(parsed, list) or not all(isinstance(x, str | int) for x in parsed):
        raise ConfigError(
            f"{labels_file}: expected one label per line or a JSON list of labels",
            field="labels",
        )
    return [str(x) for x in parsed]


def _range(opts: InitOptions) -> tuple[float | None, float | None]:
    """(min_value, max_value): `value_range`, else the smallest and largest value of the
    sample (over every feature), else no limits."""
    if opts.value_range is not None:
        lo, hi = opts.value_range
        if not lo < hi:
            raise ConfigError(f"--range {lo}:{hi}: the low end must be below the high end")
        return lo, hi
    if opts.sample is None:
        return None, None
    values = _sample_values(opts.sample)
    if values.size == 0 or not np.isfinite(values).all():
        raise ConfigError(
            f"{opts.sample}: the sample must hold finite numbers only", field="sample"
        )
    return float(values.min()), float(values.max())


def _sample_values(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        try:
            return np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{path}: not a readable .npy array ({exc})", field="sample"
            ) from None
    text = _read(path, "sample file").decode("utf-8", errors="replace")
    rows = [r for r in csv.reader(text.splitlines()) if r]
    try:
        numbers = [[float(v) for v in r] for r in rows]
    except ValueError:
        try:  # a header row
            numbers = [[float(v) for v in r] for r in rows[1:]]
        except ValueError as exc:
            raise ConfigError(
                f"{path}: expected rows of numbers (a header row allowed): {exc}", field="sample"
            ) from None
    return np.asarray([v for r in numbers for v in r], dtype=np.float64)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
