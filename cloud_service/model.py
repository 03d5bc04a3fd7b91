"""The cloud's re-ranking models: load verified bundles and re-rank edge candidates.

Bundles are loaded and verified by the shared runtime (`runtime.bundle.load_bundle`, the
edge node's loader too, so both refuse a bad bundle with the same message) and run through
`runtime.onnx_model.OnnxModel`, behind the `runtime.model.Model` protocol. cloud_service
never imports edge_node.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from router.candidates import restrict_and_rank
from router.errors import BundleError, EdgerouteError, InputError, UnknownTask
from router.inputs import coerce_inputs
from router.manifest import MANIFEST_FILE, BundleManifest
from router.wire import (
    INPUTS_REQUIRED,
    RerankFailure,
    RerankItem,
    RerankResult,
    WireCandidate,
    WireError,
)
from runtime.bundle import load_bundle
from runtime.model import Model
from runtime.onnx_model import OnnxModel

_log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class CloudModel:
    """One task's cloud model: any `runtime.model.Model` (an `OnnxModel` when loaded from
    a bundle) with the checks and re-ranking of the wire items around it.

    Immutable; `rerank` and `self_check` are thread-safe (models are).
    """

    model: Model

    @classmethod
    def load(
        cls, path: str | Path, *, role: str | None = None, intra_op_threads: int = 1
    ) -> CloudModel:
        """Load and verify the bundle folder at `path` with `runtime.bundle.load_bundle`
        (no signature check; in `role`, None: any); each session run uses
        `intra_op_threads` threads.

        Raises BundleError exactly as the edge's loader does (same messages, naming the
        path and reason): the folder or a file is missing, the manifest is invalid, the
        sha256 differs, onnxruntime rejects the model, or the graph's input/output do not
        match the manifest. Thread-safe.
        """
        return cls(OnnxModel(load_bundle(path, role=role, intra_op_threads=intra_op_threads)))

    @property
    def manifest(self) -> BundleManifest:
        """The manifest of the serving bundle."""
        return self.model.bundle.manifest

    @property
    def path(self) -> Path:
        """The bundle folder."""
        return self.model.bundle.path

    @property
    def task(self) -> str:
        """The task this model serves."""
        return self.manifest.task

    @property
    def version(self) -> str:
        """The model version reported in every result."""
        return self.manifest.version

    def rerank(self, items: Sequence[RerankItem]) -> list[RerankResult | RerankFailure]:
        """Re-rank each item's candidates (all labels when None), results in item order.

        The session runs once on the stacked batch of the valid items. Per-item faults
        (wrong task, wrong input length, non-finite or out-of-range values, unknown or empty
        candidates) become a RerankFailure and do not affect the other items. Raises
        BundleError only if the model itself fails to run.
        """
        results: list[RerankResult | RerankFailure | None] = [None] * len(items)
        valid: list[int] = []
        rows: list[list[float]] = []
        for i, item in enumerate(items):
            fault = self._check(item)
            if fault is None:
                valid.append(i)
                rows.append(item.inputs or [])
            else:
                results[i] = RerankFailure(
                    request_id=item.request_id, task=item.task, error=WireError(**fault.to_dict())
                )
        if valid:
            probs = self._run(np.asarray(rows, dtype=np.dtype(self.manifest.input.dtype)))
            for row, i in zip(probs.tolist(), valid, strict=True):
                results[i] = self._result(items[i], row)
        return [r for r in results if r is not None]

    def self_check(self) -> None:
        """Run the session once on a zero input and verify the output (for health checks).

        Raises BundleError if the session fails, returns the wrong shape, or non-finite
        probabilities. Thread-safe.
        """
        spec = self.manifest.input
        zeros = np.zeros((1, spec.item_size), dtype=np.dtype(spec.dtype))
        probs = self._run(zeros)
        if not np.isfinite(probs).all():
            raise BundleError(f"model {self.task}@{self.version} returned non-finite values")

    def _check(self, item: RerankItem) -> EdgerouteError | None:
        spec = self.manifest.input
        if item.task != self.task:
            return UnknownTask(
                f"this model serves task {self.task!r}, not {item.task!r}", field="task"
            )
        if item.inputs is None:
            return InputError(
                f"the cloud model of task {self.task!r} needs the inputs; the edge policy "
                "sends candidates only (send: candidates_only)",
                field="inputs",
                code=INPUTS_REQUIRED,
            )
        try:  # the edge's own input validation: one set of rules and messages
            coerce_inputs(item.inputs, spec)
        except InputError as exc:
            return exc
        if item.candidates is not None:
            if not item.candidates:
                return InputError(
                    "candidates is empty (send null to score all labels)", field="candidates"
                )
            known = set(self.manifest.labels)
            unknown = [c for c in item.candidates if c not in known]
            if unknown:
                return InputError(
                    f"unknown candidate labels {unknown[:5]} for task {self.task!r}",
                    field="candidates",
                    code="unknown_label",
                )
        return None

    def _run(self, batch: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        """Probabilities [N, C] of flat rows [N, item_size] (BundleError if the model fails)."""
        try:
            return self.model.predict(batch).probs
        except InputError as exc:  # rows are checked by `_check`: the model disagrees
            raise BundleError(f"model {self.task}@{self.version}: {exc.message}") from None

    def _result(self, item: RerankItem, probs: list[float]) -> RerankResult:
        ranked = restrict_and_rank(probs, self.manifest.labels, item.candidates)
        return RerankResult(
            request_id=item.request_id,
            task=item.task,
            label=ranked[0].label,
            score=ranked[0].score,
            candidates=[WireCandidate(label=c.label, score=c.score) for c in ranked],
            model_version=self.version,
            scored="all_labels" if item.candidates is None else "candidates",
        )


def load_cloud_models(
    bundles_dir: str | Path, *, role: str | None = "cloud"
) -> dict[str, CloudModel]:
    """Load every bundle under `bundles_dir/<task>/` (or `bundles_dir` itself if it holds a
    manifest.json), keyed by the manifest's task.

    Raises BundleError when the folder is missing, holds no bundle, two bundles claim the
    same task, a bundle's role is not `role` (None: any role), or any bundle fails to load.
    """
    root = Path(bundles_dir)
    if not root.is_dir():
        raise BundleError(f"{root}: no such bundles folder")
    if (root / MANIFEST_FILE).is_file():
        folders = [root]
    else:
        folders = sorted(p for p in root.iterdir() if (p / MANIFEST_FILE).is_file())
    if not folders:
        raise BundleError(f"{root}: no bundle found (expected <task>/{MANIFEST_FILE})")
    models: dict[str, CloudModel] = {}
    for folder in folders:
        model = CloudModel.load(folder, role=role)
        if model.task in models:
            raise BundleError(
                f"{folder}: task {model.task!r} is already served by {models[model.task].path}"
            )
        models[model.task] = model
        _log.info("cloud_model_loaded", task=model.task, model_version=model.version)
    return models
