"""`OnnxModel`: a verified bundle's onnxruntime session behind the `runtime.model.Model` API.

The edge node serves its requests through it and the cloud service re-ranks through it;
both load bundles with `runtime.bundle.load_bundle`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from router.errors import BundleError, InputError
from router.manifest import InputSpec
from runtime.bundle import BundleTrust, LoadedBundle, load_bundle
from runtime.model import Prediction, new_prediction
from runtime.ort_call import Runner, direct_runner

FloatArray = npt.NDArray[np.float32]


class OnnxModel:
    """Runs one task's model (one verified bundle) and returns class probabilities.

    Implements `runtime.model.Model`. Thread-safe: the object is immutable after
    construction and onnxruntime's InferenceSession.run may be called from several threads
    at once.
    """

    __slots__ = (
        "_bundle",
        "_dtype",
        "_input_name",
        "_item_shape",
        "_item_size",
        "_labels",
        "_one_item",
        "_output_names",
        "_runner",
        "_task",
        "_version",
    )

    def __init__(self, bundle: LoadedBundle) -> None:
        """Wrap an already verified bundle (see runtime.bundle.load_bundle). Raises nothing."""
        manifest = bundle.manifest
        spec = manifest.input
        self._bundle = bundle
        self._input_name = spec.name
        self._item_shape = tuple(d for d in spec.shape[1:] if d is not None)
        self._item_size = spec.item_size
        self._one_item = (1, *self._item_shape)
        self._dtype = np.dtype(spec.dtype)
        self._output_names = [manifest.output.name]
        self._labels = tuple(manifest.labels)
        self._task = manifest.task
        self._version = manifest.version
        self._runner: Runner = direct_runner(bundle.session)

    @classmethod
    def load(
        cls, path: str | Path, trust: BundleTrust | None = None, *, intra_op_threads: int = 1
    ) -> OnnxModel:
        """Load and verify the bundle at `path` with `load_bundle` (same arguments); raises
        BundleError like it."""
        return cls(load_bundle(path, trust, intra_op_threads=intra_op_threads))

    @property
    def labels(self) -> tuple[str, ...]:
        """Class labels in the order of the probability columns."""
        return self._labels

    @property
    def version(self) -> str:
        """The bundle's model version (manifest `version`)."""
        return self._version

    @property
    def task(self) -> str:
        """The task this model serves (manifest `task`)."""
        return self._task

    @property
    def input_spec(self) -> InputSpec:
        """The manifest's input spec (name, shape, dtype, value limits)."""
        return self._bundle.manifest.input

    @property
    def bundle(self) -> LoadedBundle:
        """The loaded bundle (manifest, session, folder)."""
        return self._bundle

    def predict(self, batch: npt.ArrayLike) -> Prediction:
        """`Prediction(probs, self.version)`: probabilities float32 [N, C] for a batch shaped
        [N, *item_shape] or [N, item_size] (flat rows).

        The batch is converted to the manifest dtype (no copy when it already is); a batch
        already in the model's shape and dtype goes straight to onnxruntime, so a validated
        row (`router.inputs.coerce_inputs`) as a batch of one costs no further checks.
        Raises InputError (field "inputs") for a wrong shape or an empty batch, and
        BundleError if the model fails or returns probabilities of the wrong shape. Value
        limits are the caller's check (the HTTP layer validates against input_spec).
        Thread-safe.
        """
        arr = np.asarray(batch, dtype=self._dtype)
        if arr.shape != self._one_item:  # one item in shape is the request path: no more checks
            arr = self._conform(arr)
        return new_prediction(self._run(arr), self._version)

    def _conform(self, arr: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """`arr` as [N, *item_shape]: flat rows reshaped; InputError for anything else."""
        shaped = arr.ndim == len(self._item_shape) + 1 and arr.shape[1:] == self._item_shape
        flat = arr.ndim == 2 and arr.shape[1] == self._item_size
        if not (shaped or flat):
            dims = ", ".join(map(str, self._item_shape))
            flat_form = f" or [N, {self._item_size}]" if len(self._item_shape) > 1 else ""
            raise InputError(
                f"expected inputs shaped [N, {dims}]{flat_form}, got {list(arr.shape)}",
                field="inputs",
            )
        if arr.shape[0] == 0:
            raise InputError("the batch is empty", field="inputs")
        return arr if shaped else arr.reshape((arr.shape[0], *self._item_shape))

    def _run(self, arr: npt.NDArray[Any]) -> FloatArray:
        try:
            out = self._runner(self._output_names, {self._input_name: arr})[0]
        except Exception as exc:  # onnxruntime's own exception types
            raise BundleError(f"model {self._task}@{self._version} failed to run: {exc}") from None
        probs: FloatArray = (
            out
            if isinstance(out, np.ndarray) and out.dtype == np.float32
            else np.asarray(out, dtype=np.float32)
        )
        if probs.shape != (arr.shape[0], len(self._labels)):
            raise BundleError(
                f"model {self._task}@{self._version} returned shape {list(probs.shape)}, "
                f"expected [{arr.shape[0]}, {len(self._labels)}]"
            )
        return probs
