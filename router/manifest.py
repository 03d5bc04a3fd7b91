"""The model bundle manifest (`manifest.json` beside `model.onnx`) and pure checks on it.

A bundle is a folder: `manifest.json` + the files it lists with their sha256. Reading the
files is the caller's job (edge_node / cloud_service); the checks here take bytes.
"""

from __future__ import annotations

import hashlib
import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    task: str = Field(min_length=1)
    version: str = Field(min_length=1)
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
        return self


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_file_hash(manifest: BundleManifest, name: str, data: bytes) -> None:
    """Raise BundleError unless `data` is the file `name` exactly as the manifest lists it."""
    expected = manifest.files.get(name)
    if expected is None:
        raise BundleError(f"bundle {manifest.task}@{manifest.version}: {name} is not listed "
                          "in the manifest")
    actual = sha256_hex(data)
    if actual != expected:
        raise BundleError(f"bundle {manifest.task}@{manifest.version}: sha256 of {name} is "
                          f"{actual[:16]}..., manifest says {expected[:16]}... (corrupt or "
                          "tampered file)")
