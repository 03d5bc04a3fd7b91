"""What the node and the cloud need of a model: the `Model` protocol and its `Prediction`.

`runtime.onnx_model.OnnxModel` is the onnxruntime implementation; the edge's canary wrapper
(`edge_node.lifecycle.canary.CanaryModel`) is another one that answers with one of two
versions. Each `Prediction` carries the version that computed it, so a caller never has to
ask the model afterwards which version answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from router.manifest import InputSpec
from runtime.bundle import LoadedBundle


@dataclass(frozen=True, slots=True)
class Prediction:
    """Class probabilities of a batch and the model version that computed them."""

    probs: npt.NDArray[np.float32]
    """float32 [N, C]: one row per item, columns in the model's `labels` order."""
    version: str
    """The model version that answered these rows."""


_new_object = object.__new__
_set_probs = vars(Prediction)["probs"].__set__
_set_version = vars(Prediction)["version"].__set__


def new_prediction(probs: npt.NDArray[np.float32], version: str) -> Prediction:
    """The same object as `Prediction(probs, version)`, built with the slot setters directly.

    The generated `__init__` of a frozen dataclass sets each field through
    `object.__setattr__`, which is a noticeable part of a one-row model call; models build
    one Prediction per call on the request path, so they use this. Raises nothing.
    """
    out: Prediction = _new_object(Prediction)
    _set_probs(out, probs)
    _set_version(out, version)
    return out


class Model(Protocol):
    """A loaded model of one task. Implementations are safe to call from several threads."""

    @property
    def labels(self) -> tuple[str, ...]:
        """Class labels in the order of the probability columns."""
        ...

    @property
    def version(self) -> str:
        """The serving (current) version; a `Prediction` says which version answered it."""
        ...

    @property
    def task(self) -> str:
        """The task the model serves (manifest `task`)."""
        ...

    @property
    def input_spec(self) -> InputSpec:
        """The manifest's input spec (name, shape, dtype, value limits)."""
        ...

    @property
    def bundle(self) -> LoadedBundle:
        """The verified bundle of the serving version (manifest, session, folder)."""
        ...

    def predict(self, batch: npt.NDArray[Any]) -> Prediction:
        """Probabilities for `batch`, shaped [N, *item_shape] or [N, item_size].

        Raises router.errors.InputError (field "inputs") for a wrong shape or an empty
        batch and router.errors.BundleError when the model fails to run.
        """
        ...
