"""Requests checked against the active policy, ready for the pipeline.

`prepare(active, requests, new_id)` is the node's one input validation: every request of
a batch (a single request is a batch of one) is checked against its task's manifest
(`router.inputs.coerce_many`, each task's items in one pass), its request id made when it
brings none, and a request id that appears twice in the batch refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from router.edge_api import InferRequest
from router.errors import EdgerouteError, InputError, UnknownTask
from router.inputs import coerce_many
from router.policy import TaskPolicy

if TYPE_CHECKING:
    from edge_node.lifecycle.active_policy import ActivePolicy
    from runtime.model import Model


@dataclass(slots=True)
class PreparedItem:
    """One validated request: its id, task, task policy, edge model, inputs (a flat
    float32 row) and deadline. Never mutated after `prepare` (not frozen: a frozen init
    costs more on the request path)."""

    rid: str
    task_name: str
    task: TaskPolicy
    model: Model
    x: np.ndarray
    deadline_ms: float

    @property
    def sendable_inputs(self) -> list[float] | None:
        """The inputs that may leave the device (None: `send: candidates_only`)."""
        return None if self.task.send == "candidates_only" else self.x.tolist()


def prepare(
    active: ActivePolicy,
    requests: Sequence[InferRequest | EdgerouteError],
    new_id: Callable[[], str],
) -> list[PreparedItem | EdgerouteError]:
    """Each request checked against `active` (task known, inputs valid), in order; an
    entry that is already an error (the HTTP layer's per-item validation) stays that
    error, and so does a request whose id appeared earlier in the batch
    (`duplicate_request_id`). Returns errors, never raises for an item's fault. Pure but
    for `new_id`."""
    out: list[PreparedItem | EdgerouteError] = list(requests)  # type: ignore[arg-type]
    by_task: dict[str, list[tuple[int, InferRequest]]] = {}
    seen: set[str] = set()
    for i, req in enumerate(requests):
        if isinstance(req, EdgerouteError):
            continue
        if req.request_id is not None:
            if req.request_id in seen:
                out[i] = InputError(
                    f"request_id {req.request_id!r} appears twice in the batch",
                    field="request_id",
                    code="duplicate_request_id",
                )
                continue
            seen.add(req.request_id)
        by_task.setdefault(req.task, []).append((i, req))
    tasks, models = active.policy.tasks, active.models
    for name, reqs in by_task.items():
        task, model = tasks.get(name), models.get(name)
        if task is None or model is None:
            for i, _ in reqs:
                out[i] = unknown_task(active, name)
            continue
        rows, errors = coerce_many([r.inputs for _, r in reqs], model.input_spec)
        for (i, req), x, err in zip(reqs, rows, errors, strict=True):
            out[i] = err or _item(req, name, task, model, x, new_id)
    return out


def _item(
    req: InferRequest,
    name: str,
    task: TaskPolicy,
    model: Model,
    x: np.ndarray,
    new_id: Callable[[], str],
) -> PreparedItem:
    return PreparedItem(
        req.request_id or new_id(), name, task, model, x, float(req.deadline_ms or task.deadline_ms)
    )


def unknown_task(active: ActivePolicy, name: str) -> UnknownTask:
    """The error for a task the active policy does not serve (names the ones it does)."""
    return UnknownTask(
        f"unknown task {name!r}; this node serves: {', '.join(sorted(active.policy.tasks))}",
        field="task",
    )
