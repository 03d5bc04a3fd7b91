"""Model updates on the edge node: the per-task update state, the checks a new model
version must pass, and the canary rule. Pure: data in, verdicts out (the store and the
node in `edge_node.lifecycle.model_store` / `edge_node.lifecycle.model_updater` do the I/O).

A task's state (`DATA/models/<task>/state.json`) says which version serves it (`current`;
`POLICY_BUNDLE` for the policy's `edge_bundle`), what `edgeroute model rollback` returns
to (`previous`), a canary or shadow run in progress (`canary`), an install or rollback
request the node has not applied yet (`pending`), and the last thing that happened
(`last`). Only the running node moves `current`/`previous`/`canary`; the CLI only writes
`pending`, so every version that becomes `current` was loaded, verified and smoke-tested
by the node that serves it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from router.errors import BundleError
from router.manifest import BundleManifest
from router.policy import TASK_NAME, CanaryRule

POLICY_BUNDLE = "@policy"
"""The `current`/`previous` value meaning "the task's `edge_bundle` from the policy"."""

_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
UpdateMode = Literal["replace", "fraction", "shadow"]
UpdateResult = Literal["applied", "failed", "canary_started", "promoted", "rolled_back"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InstallRequest(_Frozen):
    """A version the node should switch to (`replace`) or try beside the current one
    (`fraction`: serve that share of requests with it; `shadow`: run it on every request
    without serving it)."""

    version: str
    mode: UpdateMode = "replace"
    fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    reason: Literal["install", "rollback"] = "install"
    requested_at: float


class CanaryState(_Frozen):
    """A candidate version running beside `current` until the canary rule decides."""

    version: str
    mode: Literal["fraction", "shadow"]
    fraction: float = Field(ge=0.0, le=1.0)
    started_at: float


class UpdateEvent(_Frozen):
    """The last update event of a task (what `/v1/status` and `model list` report)."""

    result: UpdateResult
    version: str
    at: float
    detail: str | None = None


class TaskModelState(_Frozen):
    """The content of `DATA/models/<task>/state.json`; `revision` grows with every write."""

    format_version: Literal[1] = 1
    task: str
    current: str = POLICY_BUNDLE
    previous: str | None = None
    canary: CanaryState | None = None
    pending: InstallRequest | None = None
    last: UpdateEvent | None = None
    revision: int = 0


def is_task_name(task: str) -> bool:
    """Whether `task` can name a folder: letters, digits and `._-`, 1-64 characters,
    starting with a letter or digit (so never `..`, a slash, a newline or NUL)."""
    return TASK_NAME.fullmatch(task) is not None


def check_version_name(version: str) -> None:
    """Raise BundleError(code=bad_version) unless `version` can name a store folder
    (letters, digits, `._+-`, 1-128 characters, not starting with a dot or dash)."""
    if not _VERSION.fullmatch(version):
        raise BundleError(
            f"bundle version {version!r} cannot be installed: a version may only contain "
            "letters, digits and '._+-' (1-128 characters, starting with a letter or digit)",
            code="bad_version",
        )


def check_compatible(new: BundleManifest, reference: BundleManifest, task: str) -> None:
    """Raise BundleError(code=model_mismatch) unless `new` can replace `reference` as the
    edge model of `task`: an edge bundle of that task with the same labels in the same
    order (the policy's top_k and the cloud's re-ranking refer to them) and the same input
    spec (requests are validated against it)."""
    where = f"bundle {new.task}@{new.version}"
    if new.task != task:
        raise BundleError(f"{where} is for task {new.task!r}, not {task!r}", code="model_mismatch")
    if new.role != "edge":
        raise BundleError(f"{where} is a {new.role} bundle, not an edge one", code="model_mismatch")
    if new.labels != reference.labels:
        raise BundleError(
            f"{where} has labels {_short(new.labels)}; the running model "
            f"{reference.version} has {_short(reference.labels)} (labels must be identical, "
            "in the same order)",
            code="model_mismatch",
        )
    if new.input != reference.input:
        raise BundleError(
            f"{where} takes input {new.input.model_dump()}; the running model "
            f"{reference.version} takes {reference.input.model_dump()} (the input spec must "
            "not change)",
            code="model_mismatch",
        )


def _short(labels: Sequence[str]) -> str:
    head = ", ".join(labels[:12])
    return f"[{head}{', ...' if len(labels) > 12 else ''}] ({len(labels)})"


def check_probabilities(rows: Sequence[Sequence[float]], n_labels: int, where: str) -> None:
    """Raise BundleError(code=smoke_failed) unless every row is `n_labels` finite numbers
    in [0, 1] summing to 1 (within 1e-3): what a smoke inference must return."""
    for i, row in enumerate(rows):
        if len(row) != n_labels:
            raise BundleError(
                f"{where}: smoke inference row {i} has {len(row)} values, expected {n_labels}",
                code="smoke_failed",
            )
        if not all(math.isfinite(v) for v in row):
            raise BundleError(
                f"{where}: smoke inference returned non-finite probabilities (NaN or Inf)",
                code="smoke_failed",
            )
        if min(row) < -1e-6 or max(row) > 1 + 1e-6 or abs(sum(row) - 1.0) > 1e-3:
            raise BundleError(
                f"{where}: smoke inference row {i} is not a probability vector "
                f"(min {min(row):.4g}, max {max(row):.4g}, sum {sum(row):.4g})",
                code="smoke_failed",
            )


@dataclass(frozen=True, slots=True)
class CanaryCounts:
    """What a canary has seen so far, in items (a batch of N counts N).

    `compared`: items both models ran on; `agreed`: of those, items with the same top-1
    label; `errors`: items the candidate failed on; `served_by_candidate`: items answered
    with the candidate's output; `skipped`: items not compared because the comparison
    worker was saturated.
    """

    served_by_candidate: int = 0
    compared: int = 0
    agreed: int = 0
    errors: int = 0
    skipped: int = 0

    @property
    def runs(self) -> int:
        """Items the candidate ran on (compared or failed)."""
        return self.compared + self.errors

    @property
    def agreement(self) -> float | None:
        """Share of compared items with the same top-1 label; None before any."""
        return self.agreed / self.compared if self.compared else None

    @property
    def error_rate(self) -> float | None:
        """Share of the candidate's runs that failed; None before any."""
        return self.errors / self.runs if self.runs else None


Verdict = Literal["wait", "promote", "roll_back"]


def canary_verdict(counts: CanaryCounts, rule: CanaryRule) -> tuple[Verdict, str]:
    """The canary rule: wait until the candidate ran on `rule.min_requests` items, then
    roll back if its error rate exceeds `max_error_rate` or its agreement with the
    current model is below `min_agreement`, else promote. Returns (verdict, reason)."""
    runs = counts.runs
    if runs < rule.min_requests:
        return "wait", f"{runs} of {rule.min_requests} items seen"
    error_rate = counts.errors / runs
    agreement = counts.agreed / counts.compared if counts.compared else 0.0
    if error_rate > rule.max_error_rate:
        return "roll_back", (
            f"error rate {error_rate:.3f} > max_error_rate {rule.max_error_rate} "
            f"({counts.errors} of {runs} runs failed)"
        )
    if agreement < rule.min_agreement:
        return "roll_back", (
            f"agreement {agreement:.3f} < min_agreement {rule.min_agreement} "
            f"({counts.agreed} of {counts.compared} items)"
        )
    return "promote", (
        f"agreement {agreement:.3f} >= {rule.min_agreement}, error rate {error_rate:.3f} "
        f"<= {rule.max_error_rate} over {runs} items"
    )
