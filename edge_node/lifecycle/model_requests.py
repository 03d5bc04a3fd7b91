"""Pending model requests of the store, turned into checked, loaded plans.

A task's `state.json` may hold a `pending` request (from the CLI, a drop-in, or a
rollback). `PendingRequests` finds the tasks whose state file changed and holds one, and
`plan` loads and verifies the version it names *on this node* (signature, hashes,
onnxruntime, graph), checks it against the serving model (task, labels, input spec) and
smoke-tests it. `edge_node.lifecycle.model_updater.ModelUpdater` commits and swaps plans.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

from edge_node.lifecycle.active_policy import ActivePolicy, bundle_trust
from edge_node.lifecycle.canary import current_of
from edge_node.lifecycle.model_store import ModelStore, verify_version
from router.errors import BundleError
from router.model_updates import POLICY_BUNDLE, InstallRequest
from router.policy_loader import resolve_bundle_path
from runtime.model import Model

log = structlog.get_logger("edgeroute.edge")


@dataclass(frozen=True, slots=True)
class Plan:
    """A pending request, checked and loaded, ready to be committed and swapped.

    `new` is `current` itself (and `loaded` False) for a request to keep serving the
    current version, e.g. a rollback that ends a canary.
    """

    request: InstallRequest
    current: Model
    new: Model
    loaded: bool


class PendingRequests:
    """The pending requests of one store. Not thread-safe: call one method at a time (the
    updater calls them from worker threads, one after the other)."""

    def __init__(self, store: ModelStore, policy_path: Path) -> None:
        """`policy_path` is the node's policy file (bundles and keys are relative to it)."""
        self._store = store
        self._policy_path = policy_path
        self._seen: dict[str, bytes] = {}

    def changed(self, tasks: Iterable[str]) -> list[str]:
        """Those of `tasks` whose state file changed since the previous call and holds a
        request. An invalid state file is logged and skipped (never raises)."""
        out = []
        for task in tasks:
            if not self._store.can_hold(task):
                continue
            raw = self._store.state_bytes(task)
            if raw == self._seen.get(task):
                continue
            self._seen[task] = raw
            try:
                if self._store.read_state(task).pending is not None:
                    out.append(task)
            except BundleError as exc:
                log.error("model_state_invalid", task=task, error=exc.message)
        return out

    def pending_of(self, task: str) -> InstallRequest | None:
        """The task's pending request; None if it has none or its state is unreadable."""
        try:
            return self._store.read_state(task).pending
        except BundleError:
            return None

    def plan(self, task: str, active: ActivePolicy, serving: Model) -> Plan | None:
        """Load and check the version the task's pending request names against `serving`
        (the task's model in `active`); None if nothing is pending. Slow (loads a model):
        call from a worker thread. Raises BundleError (the loader's codes, plus
        `model_mismatch` and `smoke_failed`), PolicyError (trust keys) or OSError."""
        state = self._store.read_state(task)
        req = state.pending
        if req is None:
            return None
        current = current_of(serving)
        if req.mode == "replace" and req.version == state.current:
            return Plan(req, current, current, loaded=False)  # e.g. a rollback ending a canary
        if req.version == state.current:
            raise BundleError(
                f"version {req.version!r} is already serving task {task!r}; a canary needs "
                "another version",
                code="model_mismatch",
            )
        if req.version == POLICY_BUNDLE:
            edge_bundle = active.policy.tasks[task].edge_bundle
            folder = Path(resolve_bundle_path(str(self._policy_path.parent), edge_bundle))
        else:
            folder = self._store.version_dir(task, req.version)
        trust = bundle_trust(active.policy, self._policy_path.parent)
        new = verify_version(folder, task, trust, current.bundle.manifest)
        return Plan(req, current, new, loaded=True)
