"""The node's drop-in folder, `DATA/models/incoming/`: bundles an operator copies in.

A bundle folder there that has not changed for one poll (a `cp -r` has finished;
`edgeroute model pack` into that folder is atomic anyway) is installed into the store like
`edgeroute model install` does (verified with the policy's trust settings, checked against
the serving model, smoke-tested), requested as the task's new version and removed from
`incoming/`; a refused one is moved to `DATA/models/rejected/` with `<name>.reason.txt`.
`edge_node.lifecycle.model_updater.ModelUpdater` drives it and reports the outcomes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from edge_node.lifecycle.active_policy import ActivePolicy, bundle_trust
from edge_node.lifecycle.canary import current_of
from edge_node.lifecycle.model_store import ModelStore, failure_text, read_manifest
from router.errors import BundleError, EdgerouteError
from router.model_updates import InstallRequest

log = structlog.get_logger("edgeroute.edge")


@dataclass(frozen=True, slots=True)
class DropInOutcome:
    """What became of one drop-in: `error` is None when it was installed and requested.

    `task` is None when the drop-in's manifest could not be read; `version` is its manifest
    version, or its name if it has none.
    """

    task: str | None
    version: str
    error: str | None = None


class DropIns:
    """The drop-in folder of one store. Not thread-safe: call one method at a time (the
    updater calls them from worker threads, one after the other)."""

    def __init__(self, store: ModelStore, policy_path: Path, clock: Callable[[], float]) -> None:
        """`policy_path` is the node's policy file (its trust keys are relative to it)."""
        self._store = store
        self._policy_path = policy_path
        self._clock = clock
        self._seen: dict[str, tuple[Any, ...]] = {}

    def ready(self) -> list[Path]:
        """Entries of `incoming/` unchanged since the previous call (hidden names, e.g.
        `pack`'s staging folders, are skipped). Never raises for a missing folder."""
        folder = self._store.incoming
        if not folder.is_dir():
            self._seen = {}
            return []
        seen: dict[str, tuple[Any, ...]] = {}
        ready: list[Path] = []
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue
            sig = _tree_signature(entry)
            seen[entry.name] = sig
            if self._seen.get(entry.name) == sig:
                ready.append(entry)
        self._seen = seen
        return ready

    def install(self, entry: Path, active: ActivePolicy, now: float) -> DropInOutcome:
        """Install `entry` as a new version of its task (checked against the task's serving
        model in `active`), remove it from `incoming/` and record the version as the task's
        pending request (requested at `now`). Any refusal or I/O fault is returned as the
        outcome's `error` (prefixed with the entry's name), not raised; the entry then
        stays where it is (see `reject`)."""
        task: str | None = None
        try:
            task = _task_of(entry)
            version = self._install(entry, task, active)
            shutil.rmtree(entry)
            self._store.request(task, InstallRequest(version=version, requested_at=now))
        except (EdgerouteError, OSError) as exc:
            return DropInOutcome(task, _version_of(entry), f"{entry.name}: {failure_text(exc)}")
        return DropInOutcome(task, version)

    def reject(self, entry: Path, error: str) -> None:
        """Move a refused drop-in out of `incoming/`, with its reason beside it. If it
        cannot be moved, logs why and forgets it (so it is retried only once it changes).
        Never raises."""
        try:
            self._store.rejected.mkdir(parents=True, exist_ok=True)
            dest = self._store.rejected / f"{entry.name}-{int(self._clock() * 1000)}"
            os.rename(entry, dest)
            (dest.parent / f"{dest.name}.reason.txt").write_text(error + "\n", encoding="utf-8")
        except OSError as exc:
            log.error("model_drop_in_not_moved", error=failure_text(exc))
        self._seen.pop(entry.name, None)

    def _install(self, entry: Path, task: str, active: ActivePolicy) -> str:
        if task not in active.models:
            raise BundleError(
                f"the bundle is for task {task!r}, which this node's policy does not define",
                code="model_mismatch",
            )
        current = current_of(active.models[task])
        trust = bundle_trust(active.policy, self._policy_path.parent)
        version, _ = self._store.install(entry, task, trust, current.bundle.manifest)
        return version


def _task_of(entry: Path) -> str:
    if not entry.is_dir():
        raise BundleError("only bundle folders are installed from incoming/ (not files)")
    return read_manifest(entry).task


def _version_of(entry: Path) -> str:
    """The manifest version of a drop-in, or its name if it has no readable manifest."""
    try:
        return read_manifest(entry).version
    except (EdgerouteError, OSError):
        return entry.name


def _tree_signature(entry: Path) -> tuple[Any, ...]:
    """(name, size, mtime_ns) of the entry and every file under it; () if unreadable."""
    try:
        paths = [entry, *sorted(entry.rglob("*"))] if entry.is_dir() else [entry]
        return tuple(
            (str(p.relative_to(entry)), st.st_size, st.st_mtime_ns)
            for p in paths
            for st in (p.stat(),)
        )
    except OSError:
        return ()
