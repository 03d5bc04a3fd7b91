"""A candidate model version running beside the current one (canary or shadow).

`CanaryModel` is an `EdgeModel` (same labels, input spec and bundle as the current model,
which is what the rest of the node reads), placed in `ActivePolicy.models[task]` by the
model updater; `EdgeService` needs no change to serve it.

- mode `fraction`: a deterministic share `fraction` of `predict` calls is answered by the
  candidate (call n goes to the candidate when floor((n+1)f) > floor(nf), so exactly that
  share over any long run); the current model's answer on the same input is computed off
  the request path and compared.
- mode `shadow`: every call is answered by the current model; the candidate runs on the
  same input off the request path and is compared.

A candidate that raises or returns non-finite numbers never fails a request: the current
model answers it and the failure is counted. Comparisons run on one worker thread with a
bounded backlog (`max_pending` calls); calls beyond it are counted as `skipped`, not
compared, so a slow candidate never slows down or queues up the request path.
The model updater reads `counts()` and applies the canary rule (router.model_updates).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import Literal

import numpy as np
import numpy.typing as npt
import structlog

from router.errors import BundleError, InputError
from router.model_updates import CanaryCounts
from runtime.onnx_model import EdgeModel, FloatArray

log = structlog.get_logger("edgeroute.edge")
CanaryMode = Literal["fraction", "shadow"]

# Which version answered the last `predict` of each CanaryModel (keyed by id) in this
# context. Each request runs in its own asyncio task, hence its own context, so the
# `version` the service reads after `predict` is the version that answered *this* request.
_SERVED: ContextVar[dict[int, str] | None] = ContextVar("edgeroute_canary_served", default=None)


class CanaryModel(EdgeModel):
    """The current model of a task plus a candidate version on trial.

    Thread-safe: counters are under a lock; both models are thread-safe. `version` is the
    version that answered the caller's last `predict` in the current context (the current
    model's version outside of one, e.g. in `/v1/status`).
    """

    __slots__ = (
        "_candidate",
        "_closed",
        "_counter",
        "_counts",
        "_current",
        "_executor",
        "_fraction",
        "_inflight",
        "_lock",
        "_logged_error",
        "_max_pending",
        "_mode",
    )

    def __init__(
        self,
        current: EdgeModel,
        candidate: EdgeModel,
        mode: CanaryMode,
        fraction: float,
        *,
        background: bool = True,
        max_pending: int = 64,
    ) -> None:
        """`current` answers (all calls in shadow mode, 1 - fraction of them otherwise);
        `candidate` must have the same labels and input spec (checked by the updater).
        `background` False compares on the calling thread (deterministic, for tests)."""
        super().__init__(current.bundle)
        self._current = current
        self._candidate = candidate
        self._mode: CanaryMode = mode
        self._fraction = fraction if mode == "fraction" else 0.0
        self._lock = threading.Lock()
        self._counter = 0
        self._counts = CanaryCounts()
        self._inflight = 0
        self._max_pending = max_pending
        self._closed = False
        self._logged_error = False
        self._executor = (
            ThreadPoolExecutor(1, thread_name_prefix=f"canary-{current.task}")
            if background
            else None
        )

    @property
    def current(self) -> EdgeModel:
        """The model that serves the task unless the candidate is promoted."""
        return self._current

    @property
    def candidate(self) -> EdgeModel:
        """The version on trial."""
        return self._candidate

    @property
    def mode(self) -> CanaryMode:
        return self._mode

    @property
    def fraction(self) -> float:
        """Share of calls answered by the candidate (0 in shadow mode)."""
        return self._fraction

    @property
    def version(self) -> str:
        """The version that answered this context's last `predict` (see module doc)."""
        served = _SERVED.get()
        if served is not None:
            v = served.get(id(self))
            if v is not None:
                return v
        return self._current.version

    def counts(self) -> CanaryCounts:
        """A snapshot of the counters."""
        with self._lock:
            return self._counts

    def close(self) -> None:
        """Stop comparing (the worker thread ends; later calls are counted as skipped).
        Calls still answer normally. Idempotent."""
        with self._lock:
            self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def predict(self, batch: npt.ArrayLike) -> FloatArray:
        """Probabilities [N, C] from the candidate (for its share of calls) or the current
        model. Raises like EdgeModel.predict for bad inputs; never for a candidate fault."""
        if self._mode == "fraction" and self._take():
            try:
                probs = self._candidate.predict(batch)
                _require_finite(probs, self._candidate)
            except InputError:
                raise
            except Exception as exc:  # onnxruntime faults arrive as BundleError
                self._candidate_failed(_rows(batch), exc)
            else:
                self._add(served_by_candidate=len(probs))
                self._compare_later(self._current, batch, probs, other_is_candidate=False)
                return self._answered(self._candidate, probs)
        probs = self._current.predict(batch)
        if self._mode == "shadow":
            self._compare_later(self._candidate, batch, probs, other_is_candidate=True)
        return self._answered(self._current, probs)

    def predict_one(self, item: Sequence[float] | npt.ArrayLike) -> FloatArray:
        """Probabilities [C] for one item, through `predict` (so it takes part too)."""
        arr = np.asarray(item, dtype=self._dtype)
        if arr.size != self._item_size:
            raise InputError(f"expected {self._item_size} numbers, got {arr.size}", field="inputs")
        probs: FloatArray = self.predict(arr.reshape((1, *self._item_shape)))[0]
        return probs

    def predict_row(self, item: npt.NDArray[np.float32]) -> list[float]:
        """`EdgeModel.predict_row` through `predict`, so single requests take part too."""
        probs: list[float] = self.predict(item.reshape((1, *self._item_shape)))[0].tolist()
        return probs

    # ---- internals ------------------------------------------------------------------

    def _take(self) -> bool:
        with self._lock:
            n = self._counter
            self._counter = n + 1
        return int((n + 1) * self._fraction) > int(n * self._fraction)

    def _answered(self, model: EdgeModel, probs: FloatArray) -> FloatArray:
        served = _SERVED.get()
        _SERVED.set({**(served or {}), id(self): model.version})
        return probs

    def _add(self, **delta: int) -> None:
        with self._lock:
            c = self._counts
            self._counts = CanaryCounts(
                served_by_candidate=c.served_by_candidate + delta.get("served_by_candidate", 0),
                compared=c.compared + delta.get("compared", 0),
                agreed=c.agreed + delta.get("agreed", 0),
                errors=c.errors + delta.get("errors", 0),
                skipped=c.skipped + delta.get("skipped", 0),
            )

    def _candidate_failed(self, n: int, exc: BaseException) -> None:
        self._add(errors=n)
        with self._lock:
            first, self._logged_error = not self._logged_error, True
        if first:  # once per canary: the counters and /v1/status carry the rest
            log.warning(
                "canary_candidate_failed",
                task=self.task,
                model_version=self._candidate.version,
                error=exc.message if isinstance(exc, BundleError) else type(exc).__name__,
            )

    def _compare_later(
        self, other: EdgeModel, batch: npt.ArrayLike, probs: FloatArray, *, other_is_candidate: bool
    ) -> None:
        x = np.array(batch, dtype=self._dtype, copy=True)
        if self._executor is None:
            self._compare(other, x, probs, other_is_candidate)
            return
        with self._lock:
            full = self._closed or self._inflight >= self._max_pending
            if not full:
                self._inflight += 1
        if full:
            self._add(skipped=len(probs))
            return
        try:
            self._executor.submit(self._compare_job, other, x, probs, other_is_candidate)
        except RuntimeError:  # closed meanwhile
            with self._lock:
                self._inflight -= 1
            self._add(skipped=len(probs))

    def _compare_job(
        self, other: EdgeModel, x: npt.NDArray[np.generic], probs: FloatArray, is_cand: bool
    ) -> None:
        try:
            self._compare(other, x, probs, is_cand)
        finally:
            with self._lock:
                self._inflight -= 1

    def _compare(
        self, other: EdgeModel, x: npt.NDArray[np.generic], probs: FloatArray, is_cand: bool
    ) -> None:
        try:
            other_probs = other.predict(x)
            if is_cand:
                _require_finite(other_probs, other)
        except Exception as exc:  # a fault of `other` must not escape the worker
            if is_cand:
                self._candidate_failed(len(probs), exc)
            else:
                self._add(skipped=len(probs))
            return
        same = int(np.count_nonzero(np.argmax(probs, axis=1) == np.argmax(other_probs, axis=1)))
        self._add(compared=len(probs), agreed=same)


def _require_finite(probs: FloatArray, model: EdgeModel) -> None:
    if not np.isfinite(probs).all():
        raise BundleError(f"model {model.task}@{model.version} returned non-finite probabilities")


def _rows(batch: npt.ArrayLike) -> int:
    shape = np.shape(batch)
    return int(shape[0]) if shape else 1
