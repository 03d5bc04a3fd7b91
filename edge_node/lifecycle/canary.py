"""A candidate model version running beside the current one (canary or shadow).

`CanaryModel` implements `runtime.model.Model` around two models of one task: it reports
the current model's labels, input spec, bundle and version (what the rest of the node
reads), and each `Prediction` it returns names the version that answered it. The model
updater places it in `ActivePolicy.models[task]`; `EdgeService` needs no change to serve it.

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
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import structlog

from router.errors import BundleError, InputError
from router.manifest import InputSpec
from router.model_updates import CanaryCounts
from runtime.bundle import LoadedBundle
from runtime.model import Model, Prediction

log = structlog.get_logger("edgeroute.edge")
CanaryMode = Literal["fraction", "shadow"]
FloatArray = npt.NDArray[np.float32]


class CanaryModel:
    """The current model of a task plus a candidate version on trial (a `Model`).

    Thread-safe: counters are under a lock; both models are thread-safe. Not a subclass of
    either model: it holds both, and `predict` says which one answered.
    """

    __slots__ = (
        "_candidate",
        "_closed",
        "_counter",
        "_counts",
        "_current",
        "_dtype",
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
        current: Model,
        candidate: Model,
        mode: CanaryMode,
        fraction: float,
        *,
        background: bool = True,
        max_pending: int = 64,
    ) -> None:
        """`current` answers (all calls in shadow mode, 1 - fraction of them otherwise);
        `candidate` must have the same labels and input spec (checked by the updater).
        `background` False compares on the calling thread (deterministic, for tests)."""
        self._current = current
        self._candidate = candidate
        self._dtype = np.dtype(current.input_spec.dtype)
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
    def current(self) -> Model:
        """The model that serves the task unless the candidate is promoted."""
        return self._current

    @property
    def candidate(self) -> Model:
        """The version on trial."""
        return self._candidate

    @property
    def mode(self) -> CanaryMode:
        """`fraction` (the candidate answers its share) or `shadow` (it is only compared)."""
        return self._mode

    @property
    def fraction(self) -> float:
        """Share of calls answered by the candidate (0 in shadow mode)."""
        return self._fraction

    @property
    def labels(self) -> tuple[str, ...]:
        """The current model's labels (the candidate's are the same)."""
        return self._current.labels

    @property
    def version(self) -> str:
        """The current model's version (the serving one); each `Prediction` from `predict`
        names the version that answered it."""
        return self._current.version

    @property
    def task(self) -> str:
        """The task of both models."""
        return self._current.task

    @property
    def input_spec(self) -> InputSpec:
        """The current model's input spec (the candidate's is the same)."""
        return self._current.input_spec

    @property
    def bundle(self) -> LoadedBundle:
        """The current model's bundle."""
        return self._current.bundle

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

    def predict(self, batch: npt.NDArray[Any]) -> Prediction:
        """The candidate's Prediction (for its share of calls) or the current model's; its
        `version` says which answered. Raises InputError for bad inputs and BundleError if
        the current model fails; never for a candidate fault (the current model answers).
        Thread-safe; the comparison runs off the calling thread unless `background` is off.
        """
        if self._mode == "fraction" and self._take():
            try:
                answer = self._candidate.predict(batch)
                _require_finite(answer.probs, self._candidate)
            except InputError:
                raise
            except Exception as exc:  # onnxruntime faults arrive as BundleError
                self._candidate_failed(_rows(batch), exc)
            else:
                self._add(served_by_candidate=len(answer.probs))
                self._compare_later(self._current, batch, answer.probs, other_is_candidate=False)
                return answer
        answer = self._current.predict(batch)
        if self._mode == "shadow":
            self._compare_later(self._candidate, batch, answer.probs, other_is_candidate=True)
        return answer

    # ---- internals ------------------------------------------------------------------

    def _take(self) -> bool:
        with self._lock:
            n = self._counter
            self._counter = n + 1
        return int((n + 1) * self._fraction) > int(n * self._fraction)

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
        self, other: Model, batch: npt.NDArray[Any], probs: FloatArray, *, other_is_candidate: bool
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
        self, other: Model, x: npt.NDArray[Any], probs: FloatArray, is_cand: bool
    ) -> None:
        try:
            self._compare(other, x, probs, is_cand)
        finally:
            with self._lock:
                self._inflight -= 1

    def _compare(self, other: Model, x: npt.NDArray[Any], probs: FloatArray, is_cand: bool) -> None:
        try:
            other_probs = other.predict(x).probs
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


def current_of(model: Model) -> Model:
    """The model that serves outside of a trial: a canary's current model, else `model`."""
    return model.current if isinstance(model, CanaryModel) else model


def _require_finite(probs: FloatArray, model: Model) -> None:
    if not np.isfinite(probs).all():
        raise BundleError(f"model {model.task}@{model.version} returned non-finite probabilities")


def _rows(batch: npt.NDArray[Any]) -> int:
    shape = np.shape(batch)
    return int(shape[0]) if shape else 1
