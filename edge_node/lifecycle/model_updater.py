"""Safe model updates on a running node: install, swap, canary, roll back.

`ModelUpdater.watch` polls the node's model store (`edge_node.lifecycle.model_store`) every
`poll_interval_s`:

1. **Drop-ins** (`edge_node.lifecycle.model_drop_ins`): a finished bundle folder in
   `DATA/models/incoming/` is installed into the store and requested as the task's new
   version; a refused one is moved to `DATA/models/rejected/` with its reason.
2. **Requests** (`edge_node.lifecycle.model_requests`): a task whose `state.json` holds a
   `pending` request (from the CLI, a drop-in, or a rollback) gets it applied: the version
   is loaded and verified again *by this node* in a worker thread, checked against the
   serving model (task, labels, input spec) and smoke-tested; then the state file is
   written and `service.active` is replaced by a copy with only that task's model changed
   (one attribute assignment: each request reads `active` once, so it is served wholly by
   the old or the new model).
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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import structlog

from edge_node.lifecycle.active_policy import ActivePolicy
from edge_node.lifecycle.canary import CanaryMode, CanaryModel, current_of
from edge_node.lifecycle.model_drop_ins import DropIns
from edge_node.lifecycle.model_requests import PendingRequests
from edge_node.lifecycle.model_store import ModelStore, failure_text
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
from runtime.model import Model

log = structlog.get_logger("edgeroute.edge")


class _Service(Protocol):
    active: ActivePolicy
    metrics: EdgeMetrics


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
        self._lock = lock
        self._clock = clock
        self._interval = poll_interval_s
        self._drop_ins = DropIns(store, policy_path, clock)
        self._requests = PendingRequests(store, policy_path)
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
        requests, canary verdicts. Raises only for unexpected faults (`watch` logs them)."""
        self.polls += 1
        await self._settle_model_errors()
        for entry in await asyncio.to_thread(self._drop_ins.ready):
            await self._install_drop_in(entry)
        tasks = list(self._svc.active.models)
        for task in await asyncio.to_thread(self._requests.changed, tasks):
            await self._apply_pending(task)
        await self._judge_canaries()

    def close(self) -> None:
        """Stop the comparison workers of running canaries (the node is shutting down).
        Idempotent; never raises."""
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

    def _from_store(self, model: Model) -> bool:
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
                    log.error("model_state_write_failed", task=task, error=failure_text(exc))
                self._svc.metrics.model_updates.labels(task, "failed").inc()
            self._svc.active = dataclasses.replace(active, model_errors={})

    # ---- drop-ins ---------------------------------------------------------------------

    async def _install_drop_in(self, entry: Path) -> None:
        async with self._lock:
            active = self._svc.active
            now = self._clock()
            out = await asyncio.to_thread(self._drop_ins.install, entry, active, now)
            if out.error is None:
                log.info("model_drop_in_installed", task=out.task, model_version=out.version)
                return
            known = out.task is not None and out.task in active.models
            label = out.task if out.task is not None and known else "unknown"
            await self._failed(label, out.version, out.error, now, persist=known)
            await asyncio.to_thread(self._drop_ins.reject, entry, out.error)

    # ---- pending requests -----------------------------------------------------------

    async def _apply_pending(self, task: str) -> None:
        async with self._lock:
            active = self._svc.active
            serving = active.models.get(task)
            if serving is None:
                return
            now = self._clock()
            try:
                plan = await asyncio.to_thread(self._requests.plan, task, active, serving)
            except (EdgerouteError, OSError) as exc:
                req = await asyncio.to_thread(self._requests.pending_of, task)
                version = req.version if req is not None else "?"
                await self._failed(task, version, failure_text(exc), now, persist=True, request=req)
                return
            if plan is None:
                return
            req = plan.request
            trial: CanaryState | None = None
            if req.mode == "replace":
                entry: Model = plan.new
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
                await self._failed(task, req.version, failure_text(exc), now, persist=False)
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
                previous_version=current_of(serving).version,
            )

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
                log.error("model_state_write_failed", task=task, error=failure_text(exc))
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

    def _swap(self, active: ActivePolicy, task: str, model: Model) -> None:
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
            log.error("model_state_write_failed", task=task, error=failure_text(exc))
