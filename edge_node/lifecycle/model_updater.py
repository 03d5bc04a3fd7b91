"""Safe model updates on a running node: install, swap, canary, roll back.

`ModelUpdater.watch` polls the node's model store (`edge_node.lifecycle.model_store`) every
`poll_interval_s`:

1. **Drop-ins**: a bundle folder in `DATA/models/incoming/` that has not changed for one
   poll (a `cp -r` has finished; `edgeroute model pack` into that folder is atomic anyway)
   is installed into the store like `edgeroute model install` does (verified with the
   policy's trust settings, checked against the serving model, smoke-tested) and
   requested as the task's new version; a refused one is moved to `DATA/models/rejected/`
   with `<name>.reason.txt`.
2. **Requests**: a task whose `state.json` holds a `pending` request (from the CLI, a
   drop-in, or a rollback) gets it applied: the version is loaded and verified again *by
   this node* in a worker thread, checked against the serving model (task, labels, input
   spec) and smoke-tested; then the state file is written and `service.active` is
   replaced by a copy with only that task's model changed (one attribute assignment:
   each request reads `active` once, so it is served wholly by the old or the new model).
   On any failure nothing is swapped: the running version keeps serving, the failure is
   counted (`edgeroute_model_loads_total{result="error"}`,
   `edgeroute_model_updates_total{result="failed"}`), logged, and reported in the state
   file and `/v1/status` (`models_update`).
3. **Canaries**: a `CanaryModel` in `active.models` is judged by its task's `canary` rule
   (router.model_updates.canary_verdict); promotion makes the candidate `current`
   (the old one becomes `previous`), rollback drops it; both write the state file first
   and then swap.

Every swap is made under the policy reloader's lock, so reloads and updates never
overwrite each other. Use from the node's event loop; all file and model I/O runs in
worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from edge_node.lifecycle.active_policy import ActivePolicy, bundle_trust
from edge_node.lifecycle.canary import CanaryMode, CanaryModel
from edge_node.lifecycle.model_store import ModelStore, read_manifest, verify_version
from edge_node.observe.metrics import EdgeMetrics
from router.errors import BundleError, EdgerouteError
from router.model_updates import (
    POLICY_BUNDLE,
    CanaryState,
    InstallRequest,
    TaskModelState,
    UpdateEvent,
    UpdateResult,
    canary_verdict,
)
from router.policy_loader import resolve_bundle_path
from runtime.onnx_model import EdgeModel

log = structlog.get_logger("edgeroute.edge")


class _Service(Protocol):
    active: ActivePolicy
    metrics: EdgeMetrics


@dataclass(frozen=True, slots=True)
class _Plan:
    """A pending request, checked and loaded, ready to be committed and swapped."""

    request: InstallRequest
    current: EdgeModel
    new: EdgeModel
    loaded: bool


class ModelUpdater:
    """Applies installs, rollbacks and canary verdicts to `service.active` (see module
    doc). Not thread-safe: use from the service's event loop."""

    def __init__(
        self,
        service: _Service,
        store: ModelStore,
        policy_path: Path,
        lock: asyncio.Lock,
        *,
        clock: Callable[[], float] = time.time,
        poll_interval_s: float = 0.25,
    ) -> None:
        """`lock` must be the one the policy reloader swaps `active` under."""
        self._svc = service
        self._store = store
        self._policy_path = policy_path
        self._lock = lock
        self._clock = clock
        self._interval = poll_interval_s
        self._state_seen: dict[str, bytes] = {}
        self._incoming_seen: dict[str, tuple[Any, ...]] = {}
        self._last: dict[str, UpdateEvent] = {}
        self._root = store.root.resolve()
        self.polls = 0

    # ---- the loop -----------------------------------------------------------------

    async def watch(self, stop: asyncio.Event) -> None:
        """Poll now and then every `poll_interval_s` until `stop` is set. A poll that
        fails unexpectedly is logged and the next one runs as usual. Creates the drop-in
        folder, so operators find it."""
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self._store.incoming.mkdir, parents=True, exist_ok=True)
        while not stop.is_set():
            try:
                await self.poll()
            except Exception as exc:  # the watcher must outlive any single bad poll
                log.error("model_update_poll_failed", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._interval)

    async def poll(self) -> None:
        """One round: installed versions that failed at activation, drop-ins, pending
        requests, canary verdicts."""
        self.polls += 1
        await self._settle_model_errors()
        for entry in await asyncio.to_thread(self._ready_drop_ins):
            await self._install_drop_in(entry)
        for task in await asyncio.to_thread(self._tasks_with_pending):
            await self._apply_pending(task)
        await self._judge_canaries()

    def close(self) -> None:
        """Stop the comparison workers of running canaries (the node is shutting down)."""
        for model in self._svc.active.models.values():
            if isinstance(model, CanaryModel):
                model.close()

    # ---- status ---------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Per task, for `/v1/status` (`models_update`): `state` (idle, canary, or the
        last event: applied / failed / promoted / rolled_back), `serving` version and its
        `source` (store or policy), the last event's `version`, `detail`, `error` (failed
        only) and `at`, and the running `canary` with its counters (None if none)."""
        out: dict[str, Any] = {}
        active = self._svc.active
        for task, model in active.models.items():
            canary = model if isinstance(model, CanaryModel) else None
            current = canary.current if canary is not None else model
            last = self._last.get(task)
            entry: dict[str, Any] = {
                "state": "canary" if canary else (last.result if last else "idle"),
                "serving": current.version,
                "source": "store" if self._from_store(current) else "policy",
                "version": last.version if last else None,
                "detail": last.detail if last else None,
                "error": last.detail if last and last.result == "failed" else None,
                "at": last.at if last else None,
                "canary": None,
            }
            if canary is not None:
                c = canary.counts()
                rule = active.policy.tasks[task].canary
                entry["canary"] = {
                    "version": canary.candidate.version,
                    "mode": canary.mode,
                    "fraction": canary.fraction,
                    "served_by_candidate": c.served_by_candidate,
                    "compared": c.compared,
                    "agreed": c.agreed,
                    "errors": c.errors,
                    "skipped": c.skipped,
                    "agreement": c.agreement,
                    "error_rate": c.error_rate,
                    "rule": rule.model_dump(),
                }
            out[task] = entry
        return out

    def _from_store(self, model: EdgeModel) -> bool:
        return self._root in model.bundle.path.resolve().parents

    # ---- activation failures -----------------------------------------------------------

    async def _settle_model_errors(self) -> None:
        """An installed version that failed to load when the policy was activated (the
        task serves its policy bundle): make the state file say so, once."""
        if not self._svc.active.model_errors:
            return
        async with self._lock:
            active = self._svc.active
            now = self._clock()
            for task, error in active.model_errors.items():

                def fallback(s: TaskModelState, error: str = error) -> TaskModelState:
                    event = UpdateEvent(result="failed", version=s.current, at=now, detail=error)
                    self._last[s.task] = event
                    return s.model_copy(
                        update={"current": POLICY_BUNDLE, "canary": None, "last": event}
                    )

                try:
                    await asyncio.to_thread(self._store.update_state, task, fallback)
                except (BundleError, OSError) as exc:
                    log.error("model_state_write_failed", task=task, error=_describe(exc))
                self._svc.metrics.model_updates.labels(task, "failed").inc()
            self._svc.active = dataclasses.replace(active, model_errors={})

    # ---- drop-ins ---------------------------------------------------------------------

    def _ready_drop_ins(self) -> list[Path]:
        """Entries of `incoming/` unchanged since the previous poll (hidden names, e.g.
        `pack`'s staging folders, are skipped)."""
        folder = self._store.incoming
        if not folder.is_dir():
            self._incoming_seen = {}
            return []
        seen: dict[str, tuple[Any, ...]] = {}
        ready: list[Path] = []
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue
            sig = _tree_signature(entry)
            seen[entry.name] = sig
            if self._incoming_seen.get(entry.name) == sig:
                ready.append(entry)
        self._incoming_seen = seen
        return ready

    async def _install_drop_in(self, entry: Path) -> None:
        async with self._lock:
            active = self._svc.active
            now = self._clock()
            task: str | None = None
            try:
                task = await asyncio.to_thread(_task_of, entry)
                version, _ = await asyncio.to_thread(self._install, entry, task, active)
                await asyncio.to_thread(shutil.rmtree, entry)
                req = InstallRequest(version=version, requested_at=now)
                await asyncio.to_thread(self._store.request, task, req)
            except (EdgerouteError, OSError) as exc:
                error = f"{entry.name}: {_describe(exc)}"
                version = await asyncio.to_thread(_version_of, entry)
                known = task is not None and task in active.models
                label = task if task is not None and known else "unknown"
                await self._failed(label, version, error, now, persist=known)
                await asyncio.to_thread(self._reject, entry, error)
                return
            log.info("model_drop_in_installed", task=task, model_version=version)

    def _install(self, entry: Path, task: str, active: ActivePolicy) -> tuple[str, bool]:
        if task not in active.models:
            raise BundleError(
                f"the bundle is for task {task!r}, which this node's policy does not define",
                code="model_mismatch",
            )
        current = _current_of(active.models[task])
        trust = bundle_trust(active.policy, self._policy_path.parent)
        return self._store.install(entry, task, trust, current.bundle.manifest)

    def _reject(self, entry: Path, error: str) -> None:
        """Move a refused drop-in out of `incoming/` (with its reason beside it)."""
        self._store.rejected.mkdir(parents=True, exist_ok=True)
        dest = self._store.rejected / f"{entry.name}-{int(self._clock() * 1000)}"
        try:
            os.rename(entry, dest)
            (dest.parent / f"{dest.name}.reason.txt").write_text(error + "\n", encoding="utf-8")
        except OSError as exc:  # cannot move it: remember it so it is not retried each poll
            log.error("model_drop_in_not_moved", error=_describe(exc))
        self._incoming_seen.pop(entry.name, None)

    # ---- pending requests -----------------------------------------------------------

    def _tasks_with_pending(self) -> list[str]:
        """Tasks of the active policy whose state file changed and holds a request."""
        out = []
        for task in self._svc.active.models:
            if not self._store.can_hold(task):
                continue
            raw = self._store.state_bytes(task)
            if raw == self._state_seen.get(task):
                continue
            self._state_seen[task] = raw
            try:
                if self._store.read_state(task).pending is not None:
                    out.append(task)
            except BundleError as exc:
                log.error("model_state_invalid", task=task, error=exc.message)
        return out

    async def _apply_pending(self, task: str) -> None:
        async with self._lock:
            active = self._svc.active
            serving = active.models.get(task)
            if serving is None:
                return
            now = self._clock()
            try:
                plan = await asyncio.to_thread(self._plan, task, active, serving)
            except (EdgerouteError, OSError) as exc:
                req = await asyncio.to_thread(self._pending_of, task)
                version = req.version if req is not None else "?"
                await self._failed(task, version, _describe(exc), now, persist=True, request=req)
                return
            if plan is None:
                return
            req = plan.request
            trial: CanaryState | None = None
            if req.mode == "replace":
                entry: EdgeModel = plan.new
                result: UpdateResult = "applied"
                detail = f"{req.reason}: now serving {req.version}"
                if isinstance(serving, CanaryModel) and plan.new is plan.current:
                    result, detail = "rolled_back", f"canary {serving.candidate.version} ended"
            else:
                mode: CanaryMode = "shadow" if req.mode == "shadow" else "fraction"
                trial = CanaryState(
                    version=req.version, mode=mode, fraction=req.fraction, started_at=now
                )
                entry = CanaryModel(plan.current, plan.new, mode, req.fraction)
                result = "canary_started"
                detail = "shadow" if mode == "shadow" else f"fraction {req.fraction:g}"

            def commit(s: TaskModelState) -> TaskModelState:
                rest: dict[str, Any] = {"pending": None if s.pending == req else s.pending}
                event_version = req.version
                if trial is not None:
                    rest["canary"] = trial
                else:
                    rest["current"] = req.version
                    rest["canary"] = None
                    if req.version != s.current:
                        rest["previous"] = s.current
                    elif s.canary is not None:
                        event_version = s.canary.version
                event = UpdateEvent(result=result, version=event_version, at=now, detail=detail)
                self._last[task] = event
                return s.model_copy(update={**rest, "last": event})

            try:
                await asyncio.to_thread(self._store.update_state, task, commit)
            except (EdgerouteError, OSError) as exc:
                if isinstance(entry, CanaryModel):
                    entry.close()
                await self._failed(task, req.version, _describe(exc), now, persist=False)
                return
            self._swap(active, task, entry)
            if plan.loaded:
                self._svc.metrics.model_loads.labels(task, "ok").inc()
            self._svc.metrics.model_updates.labels(task, result).inc()
            log.info(
                "model_updated",
                task=task,
                model_version=entry.candidate.version
                if isinstance(entry, CanaryModel)
                else req.version,
                result=result,
                reason=req.reason,
                previous_version=_current_of(serving).version,
            )

    def _pending_of(self, task: str) -> InstallRequest | None:
        try:
            return self._store.read_state(task).pending
        except BundleError:
            return None

    def _plan(self, task: str, active: ActivePolicy, serving: EdgeModel) -> _Plan | None:
        """Load and check the version the task's pending request names (worker thread)."""
        state = self._store.read_state(task)
        req = state.pending
        if req is None:
            return None
        current = _current_of(serving)
        if req.mode == "replace" and req.version == state.current:
            return _Plan(req, current, current, loaded=False)  # e.g. a rollback ending a canary
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
        return _Plan(req, current, new, loaded=True)

    # ---- canaries -------------------------------------------------------------------

    async def _judge_canaries(self) -> None:
        active = self._svc.active
        for task, model in active.models.items():
            if not isinstance(model, CanaryModel):
                continue
            verdict, reason = canary_verdict(model.counts(), active.policy.tasks[task].canary)
            if verdict != "wait":
                await self._conclude(task, model, promote=verdict == "promote", reason=reason)

    async def _conclude(
        self, task: str, canary: CanaryModel, *, promote: bool, reason: str
    ) -> None:
        async with self._lock:
            active = self._svc.active
            if active.models.get(task) is not canary:
                return  # replaced meanwhile (reload, rollback)
            now = self._clock()
            result: UpdateResult = "promoted" if promote else "rolled_back"
            version = canary.candidate.version

            def commit(s: TaskModelState) -> TaskModelState:
                cand = s.canary.version if s.canary is not None else version
                event = UpdateEvent(result=result, version=cand, at=now, detail=reason)
                self._last[task] = event
                rest: dict[str, Any] = {"canary": None, "last": event}
                if promote:
                    rest.update(current=cand, previous=s.current)
                return s.model_copy(update=rest)

            try:
                await asyncio.to_thread(self._store.update_state, task, commit)
            except (EdgerouteError, OSError) as exc:
                log.error("model_state_write_failed", task=task, error=_describe(exc))
                return
            self._swap(active, task, canary.candidate if promote else canary.current)
            self._svc.metrics.model_updates.labels(task, result).inc()
            log.info(
                "canary_promoted" if promote else "canary_rolled_back",
                task=task,
                model_version=version,
                previous_version=canary.current.version,
                reason=reason,
            )

    # ---- shared ---------------------------------------------------------------------

    def _swap(self, active: ActivePolicy, task: str, model: EdgeModel) -> None:
        """Replace `task`'s model in `active` (the caller holds the lock) and stop the
        comparisons of a canary that no longer serves."""
        old = active.models.get(task)
        self._svc.active = dataclasses.replace(active, models={**active.models, task: model})
        if isinstance(old, CanaryModel) and old is not model:
            old.close()

    async def _failed(
        self,
        task: str,
        version: str,
        error: str,
        now: float,
        *,
        persist: bool,
        request: InstallRequest | None = None,
    ) -> None:
        """Count, log and report a failed update; the running version keeps serving.
        `persist`: also record it in the task's state file (clearing `request`)."""
        event = UpdateEvent(result="failed", version=version, at=now, detail=error)
        self._last[task] = event
        self._svc.metrics.model_loads.labels(task, "error").inc()
        self._svc.metrics.model_updates.labels(task, "failed").inc()
        log.warning("model_update_failed", task=task, model_version=version, error=error)
        if not persist:
            return

        def record(s: TaskModelState) -> TaskModelState:
            pending = None if request is not None and s.pending == request else s.pending
            return s.model_copy(update={"pending": pending, "last": event})

        try:
            await asyncio.to_thread(self._store.update_state, task, record)
        except (EdgerouteError, OSError) as exc:
            log.error("model_state_write_failed", task=task, error=_describe(exc))


def _current_of(model: EdgeModel) -> EdgeModel:
    return model.current if isinstance(model, CanaryModel) else model


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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, EdgerouteError):
        return exc.message
    if isinstance(exc, OSError):
        return f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")
    return str(exc)
