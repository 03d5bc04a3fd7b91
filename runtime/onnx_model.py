"""The edge model: a verified bundle's onnxruntime session behind a small, typed API."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from router.errors import BundleError, InputError
from router.manifest import InputSpec
from router.model_updates import check_probabilities
from runtime.bundle import LoadedBundle, load_bundle
from runtime.ort_call import Runner, direct_runner

FloatArray = npt.NDArray[np.float32]


class EdgeModel:
    """Runs one task's edge model and returns class probabilities.

    Thread-safe: the object is immutable after construction and onnxruntime's
    InferenceSession.run may be called from several threads at once.
    """

    __slots__ = (
        "_batch_of_one",
        "_bundle",
        "_dtype",
        "_input_name",
        "_item_shape",
        "_item_size",
        "_labels",
        "_output_names",
        "_runner",
    )

    def __init__(self, bundle: LoadedBundle) -> None:
        """Wrap an already verified bundle (see runtime.bundle.load_bundle)."""
        spec = bundle.manifest.input
        self._bundle = bundle
        self._input_name = spec.name
        self._item_shape = tuple(d for d in spec.shape[1:] if d is not None)
        self._item_size = spec.item_size
        self._batch_of_one = (1, *self._item_shape)
        self._dtype = np.dtype(spec.dtype)
        self._output_names = [bundle.manifest.output.name]
        self._labels = tuple(bundle.manifest.labels)
        self._runner: Runner = direct_runner(bundle.session)

    @classmethod
    def load(cls, path: str | Path) -> EdgeModel:
        """Load and verify the bundle at `path`; raises BundleError like load_bundle."""
        return cls(load_bundle(path))

    @property
    def labels(self) -> tuple[str, ...]:
        """Class labels in the order of the probability columns."""
        return self._labels

    @property
    def version(self) -> str:
        """The bundle's model version (manifest `version`)."""
        return self._bundle.manifest.version

    @property
    def task(self) -> str:
        """The task this model serves (manifest `task`)."""
        return self._bundle.manifest.task

    @property
    def input_spec(self) -> InputSpec:
        """The manifest's input spec (name, shape, dtype, value limits)."""
        return self._bundle.manifest.input

    @property
    def bundle(self) -> LoadedBundle:
        """The loaded bundle (manifest, session, folder)."""
        return self._bundle

    def predict(self, batch: npt.ArrayLike) -> FloatArray:
        """Probabilities float32 [N, C] for a batch shaped [N, *item_shape].

        The batch is converted to the manifest dtype (no copy when it already is). Raises
        InputError (field "inputs") for a wrong shape or an empty batch, and BundleError if
        the model fails or returns probabilities of the wrong shape. Value limits are the
        caller's check (the HTTP layer validates against input_spec).
        """
        arr = np.asarray(batch, dtype=self._dtype)
        if arr.ndim != len(self._item_shape) + 1 or arr.shape[1:] != self._item_shape:
            raise InputError(
                f"expected inputs shaped [N, {', '.join(map(str, self._item_shape))}], "
                f"got {list(arr.shape)}",
                field="inputs",
            )
        if arr.shape[0] == 0:
            raise InputError("the batch is empty", field="inputs")
        return self._run(arr)

    def predict_one(self, item: Sequence[float] | npt.ArrayLike) -> FloatArray:
        """Probabilities float32 [C] for one item given flat (item_size numbers) or shaped.

        Raises InputError (field "inputs") when the item has the wrong number of values.
        """
        arr = np.asarray(item, dtype=self._dtype)
        if arr.size != self._item_size:
            raise InputError(f"expected {self._item_size} numbers, got {arr.size}", field="inputs")
        probs: FloatArray = self._run(arr.reshape((1, *self._item_shape)))[0]
        return probs

    def predict_row(self, item: npt.NDArray[np.float32]) -> list[float]:
        """Probabilities of one item already checked by `router.inputs.coerce_inputs` (a
        flat float32 array of `item_size` numbers), as a list. The request path's form of
        `predict_one`: it skips the re-checks of a validated row. Raises BundleError like
        `predict`."""
        row = item.reshape(self._batch_of_one)
        if self._dtype != np.float32:
            row = row.astype(self._dtype)
        probs: list[float] = self._run(row)[0].tolist()
        return probs

    def _run(self, arr: npt.NDArray[np.generic]) -> FloatArray:
        try:
            out = self._runner(self._output_names, {self._input_name: arr})[0]
        except Exception as exc:  # onnxruntime's own exception types
            raise BundleError(f"model {self.task}@{self.version} failed to run: {exc}") from None
        probs: FloatArray = (
            out
            if isinstance(out, np.ndarray) and out.dtype == np.float32
            else np.asarray(out, dtype=np.float32)
        )
        if probs.shape != (arr.shape[0], len(self._labels)):
            raise BundleError(
                f"model {self.task}@{self.version} returned shape {list(probs.shape)}, "
                f"expected [{arr.shape[0]}, {len(self._labels)}]"
            )
        return probs


def smoke_inputs(spec: InputSpec) -> npt.NDArray[np.generic]:
    """A small batch for a smoke inference: items filled with the lowest, middle and highest
    allowed value of `spec` (0, 0.5, 1 when it sets no limits), in its dtype and shape."""
    lo = spec.min_value if spec.min_value is not None else 0.0
    hi = spec.max_value if spec.max_value is not None else max(lo, 0.0) + 1.0
    item_shape = tuple(d for d in spec.shape[1:] if d is not None)
    values = [lo, (lo + hi) / 2.0, hi]
    rows = [np.full(item_shape, v, dtype=np.float64) for v in values]
    return np.stack(rows).astype(np.dtype(spec.dtype))


def smoke_check(model: EdgeModel) -> None:
    """Run `model` once on `smoke_inputs` of its input spec and check that it returns one
    probability vector per item (finite, in [0, 1], summing to 1).

    Raises BundleError: code `smoke_failed` for bad outputs, the model's own error if it
    cannot run. Thread-safe (a plain model run).
    """
    try:
        probs = model.predict(smoke_inputs(model.input_spec))
    except InputError as exc:  # the manifest's own spec does not fit the model
        raise BundleError(f"model {model.task}@{model.version}: {exc.message}") from None
    check_probabilities(probs.tolist(), len(model.labels), f"model {model.task}@{model.version}")
