"""The model bundle manifest (`manifest.json` beside `model.onnx`) and pure checks on it.

A bundle is a folder: `manifest.json` + the files it lists with their sha256. Reading the
files is the caller's job (edge_node / cloud_service); the checks here take bytes.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from router.errors import BundleError

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"


class InputSpec(BaseModel):
    """The model's one input tensor. `shape` has None for the batch axis."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    shape: list[int | None]
    dtype: Literal["float32", "float64", "int64"] = "float32"
    min_value: float | None = None
    max_value: float | None = None
    allow_non_finite: bool = False

    @property
    def item_size(self) -> int:
        """Numbers per item (product of the non-batch axes)."""
        return math.prod(d for d in self.shape[1:] if d is not None)


class OutputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = "probabilities"
    kind: Literal["probabilities"] = "probabilities"


class BundleManifest(BaseModel):
    """What a bundle is and how to check it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format_version: Literal[1] = 1
    task: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
    role: Literal["edge", "cloud"]
    created_at: str
    input: InputSpec
    output: OutputSpec = OutputSpec()
    labels: list[str] = Field(min_length=2)
    files: dict[str, str] = Field(description="file name -> sha256 hex")
    description: str = ""
    metrics: dict[str, float | int | str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _has_model(self) -> BundleManifest:
        if MODEL_FILE not in self.files:
            raise ValueError(f"files must list {MODEL_FILE}")
        twice = sorted(label for label, n in Counter(self.labels).items() if n > 1)
        if twice:
            raise ValueError(f"labels must be unique; listed more than once: {twice}")
        return self


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_file_hash(manifest: BundleManifest, name: str, data: bytes) -> None:
    """Raise BundleError unless `data` is the file `name` exactly as the manifest lists it."""
    expected = manifest.files.get(name)
    if expected is None:
        raise BundleError(
            f"bundle {manifest.task}@{manifest.version}: {name} is not listed in the manifest"
        )
    actual = sha256_hex(data)
    if actual != expected:
        raise BundleError(
            f"bundle {manifest.task}@{manifest.version}: sha256 of {name} is "
            f"{actual[:16]}..., manifest says {expected[:16]}... (corrupt or "
            "tampered file)"
        )


# --- pure checks shared by the edge and cloud loaders -----------------------------------

GraphDim = int | str | None
"""One axis of a graph tensor as onnxruntime reports it: a fixed size, a symbolic name or
None (unknown)."""

_ONNX_TYPES = {"float32": "tensor(float)", "float64": "tensor(double)", "int64": "tensor(int64)"}
_PROBABILITY_TYPES = ("tensor(float)", "tensor(double)")


@dataclass(frozen=True, slots=True)
class GraphTensor:
    """A graph input or output as plain data (name, shape, onnxruntime type string)."""

    name: str
    shape: tuple[GraphDim, ...]
    type: str


def parse_manifest(text: str | bytes, source: str) -> BundleManifest:
    """Parse and validate `manifest.json` text.

    Raises BundleError naming `source` and the first offending field (field=dotted path)
    when the text is not JSON or does not follow BundleManifest.
    """
    try:
        return BundleManifest.model_validate_json(text)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0] if errors else None
        loc = ".".join(str(p) for p in first["loc"]) if first else ""
        if first is not None and first["type"] == "json_invalid":
            raise BundleError(f"{source}: not valid JSON ({first['msg']})") from None
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in errors
        )
        raise BundleError(f"{source}: invalid manifest: {details}", field=loc or None) from None


def check_graph_io(
    manifest: BundleManifest,
    inputs: Sequence[GraphTensor],
    outputs: Sequence[GraphTensor],
    source: str,
) -> None:
    """Raise BundleError unless the graph has exactly the manifest's one input (name, dtype,
    rank, fixed sizes; a None batch axis must not be fixed in the graph) and an output named
    as the manifest's output whose last axis, when fixed, equals the number of labels."""
    spec = manifest.input
    if len(inputs) != 1:
        names = [t.name for t in inputs]
        raise BundleError(
            f"{source}: the graph has inputs {names}; expected one input {spec.name!r}",
            field="input.name",
        )
    graph_in = inputs[0]
    if graph_in.name != spec.name:
        raise BundleError(
            f"{source}: the graph's input is named {graph_in.name!r}, the "
            f"manifest says {spec.name!r}",
            field="input.name",
        )
    expected_type = _ONNX_TYPES[spec.dtype]
    if graph_in.type != expected_type:
        raise BundleError(
            f"{source}: the graph's input type is {graph_in.type}, the manifest "
            f"says {spec.dtype} ({expected_type})",
            field="input.dtype",
        )
    if len(graph_in.shape) != len(spec.shape) or not all(
        _dim_fits(g, m) for g, m in zip(graph_in.shape, spec.shape, strict=True)
    ):
        raise BundleError(
            f"{source}: the graph's input shape is {list(graph_in.shape)}, the "
            f"manifest says {spec.shape}",
            field="input.shape",
        )
    by_name = {t.name: t for t in outputs}
    out = by_name.get(manifest.output.name)
    if out is None:
        raise BundleError(
            f"{source}: the graph has no output {manifest.output.name!r} "
            f"(outputs: {sorted(by_name)})",
            field="output.name",
        )
    if out.type not in _PROBABILITY_TYPES:
        hint = (
            " (skl2onnx writes a sequence of maps, its ZipMap, by default: export with "
            "options={id(model): {'zipmap': False}})"
            if out.type.startswith(("seq(", "map("))
            else ""
        )
        raise BundleError(
            f"{source}: the graph's output {out.name!r} is {out.type}, not a tensor of "
            f"probabilities [N, {len(manifest.labels)}]{hint}",
            field="output.name",
            code="bad_output",
        )
    last = out.shape[-1] if out.shape else None
    if out.shape and len(out.shape) != 2:  # no shape information: the smoke run checks
        raise BundleError(
            f"{source}: the graph's output {out.name!r} has shape {list(out.shape)}; "
            f"expected [N, {len(manifest.labels)}] (one row of probabilities per item)",
            field="output.name",
            code="bad_output",
        )
    if isinstance(last, int) and last != len(manifest.labels):
        raise BundleError(
            f"{source}: the graph's output {out.name!r} has {last} classes, the "
            f"manifest lists {len(manifest.labels)} labels",
            field="labels",
        )


def _dim_fits(graph_dim: GraphDim, manifest_dim: int | None) -> bool:
    if manifest_dim is None:
        return not isinstance(graph_dim, int)
    return graph_dim == manifest_dim or not isinstance(graph_dim, int)


def check_class_labels(
    manifest: BundleManifest, graph_labels: Sequence[str] | None, source: str
) -> None:
    """Raise BundleError (field `labels`, code `labels_mismatch`) unless the manifest's
    labels are the graph's class labels in the graph's order (when the graph carries them:
    `runtime.graph_labels`); otherwise every answer would be mislabelled."""
    if graph_labels is None or list(graph_labels) == manifest.labels:
        return
    graph = list(graph_labels)
    how = (
        "in another order than"
        if sorted(graph) == sorted(manifest.labels)
        else "not the same labels as"
    )
    raise BundleError(
        f"{source}: the manifest's labels {_brief(manifest.labels)} are {how} the graph's "
        f"classes {_brief(graph)} (labels must follow the order of the probability "
        "columns; `edgeroute model init` reads them from the graph)",
        field="labels",
        code="labels_mismatch",
    )


def check_bundle_role(
    manifest: BundleManifest, source: str, *, task: str | None, role: str | None
) -> None:
    """Raise BundleError (field `task` or `role`, code `task_mismatch`) unless the bundle
    serves `task` in `role` (None: any)."""
    if task is not None and manifest.task != task:
        raise BundleError(
            f"{source}: the bundle serves task {manifest.task!r}, not {task!r} (name the "
            f"policy's task {manifest.task!r}, or build the bundle with --task {task})",
            field="task",
            code="task_mismatch",
        )
    if role is not None and manifest.role != role:
        raise BundleError(
            f"{source}: the bundle's role is {manifest.role!r}, not {role!r}",
            field="role",
            code="task_mismatch",
        )


def _brief(labels: Sequence[str], n: int = 8) -> str:
    shown = ", ".join(repr(x) for x in labels[:n])
    return f"[{shown}{', ...' if len(labels) > n else ''}]"
