"""Safe policy reload: validate fully off the event loop, then swap atomically, or keep the
last good policy and report why.

Triggers: a change of the file (polled: mtime, size and content hash), SIGHUP, and
`POST /v1/policy/reload`; all go through `PolicyReloader.reload`, one at a time. The new
policy is parsed, checked and its bundles loaded in a worker thread; only then is
`service.active` replaced (one attribute assignment, between requests: each request reads
it once) and the budget store given the new cost settings. Only `tasks` and `cost` take
effect live; a file that changes any other section (node, cloud, queue, sync, ...) is
refused with an error naming the changed keys, because those are wired into long-lived
components at start-up and applying them would be a half-applied reload: restart instead.
Versions installed in the node's model store keep serving their tasks across reloads (see
`activate`); the model updater takes the same lock (`lock`), so a reload and a model update
never build on each other's stale `active`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import structlog

from edge_node.lifecycle.active_policy import ActivePolicy, activate
from edge_node.lifecycle.model_store import ModelStore
from edge_node.storage.budget_store import BudgetStore
from router.errors import BundleError, PolicyError
from router.policy import Policy
from router.policy_loader import policy_revision

log = structlog.get_logger("edgeroute.edge")
LIVE_SECTIONS = frozenset({"version", "tasks", "cost"})
Trigger = Literal["file_change", "sighup", "http", "manual"]


class _Service(Protocol):
    active: ActivePolicy

    @property
    def budget(self) -> BudgetStore: ...


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """What one reload attempt did: `applied` (swapped), `unchanged` (same content as the
    active revision) or `failed` (last good policy kept; `error` says why)."""

    result: Literal["applied", "unchanged", "failed"]
    trigger: str
    revision: str | None
    at: float
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the body of `POST /v1/policy/reload`)."""
        return {
            "result": self.result,
            "trigger": self.trigger,
            "revision": self.revision,
            "at": self.at,
            "error": self.error,
        }


class PolicyReloader:
    """Reloads `service.active` from `path`. Use from the service's event loop; reloads are
    serialised by an asyncio lock, and the loading itself runs in a worker thread."""

    def __init__(
        self,
        service: _Service,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        poll_interval_s: float = 1.0,
        store: ModelStore | None = None,
    ) -> None:
        """`store`: the node's model store, whose installed versions win over the policy's
        bundles (None: the policy's bundles only)."""
        self._svc = service
        self._path = path
        self._clock = clock
        self._interval = poll_interval_s
        self._store = store
        self._lock = asyncio.Lock()
        self._seen = _signature(path)
        self.last_error: str | None = None
        self.last_attempt_at: float | None = None
        self.last_outcome: ReloadOutcome | None = None
        self.reloads = 0
        self.failures = 0

    @property
    def lock(self) -> asyncio.Lock:
        """Held while `service.active` is being rebuilt and swapped; anything else that
        swaps it (the model updater) must hold it too."""
        return self._lock

    def snapshot(self) -> dict[str, Any]:
        """Reload state for `/v1/status` (`policy.*`): the active revision and load time,
        the last attempt's time, result and error (None after a success)."""
        active = self._svc.active
        last = self.last_outcome
        return {
            "revision": active.revision,
            "loaded_at": active.loaded_at,
            "source": active.source,
            "last_attempt_at": self.last_attempt_at,
            "last_result": last.result if last is not None else None,
            "last_trigger": last.trigger if last is not None else None,
            "last_error": self.last_error,
            "reloads": self.reloads,
            "reload_failures": self.failures,
        }

    async def reload(self, trigger: Trigger = "manual") -> ReloadOutcome:
        """Read, validate and (if valid and different) activate the policy file. Never
        raises for a bad file: the outcome says what happened and the last good policy
        stays active. Concurrent calls run one after the other."""
        async with self._lock:
            now = self._clock()
            self.last_attempt_at = now
            current = self._svc.active
            try:
                new = await asyncio.to_thread(self._load, current, now)
            except (PolicyError, BundleError, OSError, UnicodeDecodeError) as exc:
                return self._failed(trigger, now, _describe(exc))
            if new is None:
                outcome = ReloadOutcome("unchanged", trigger, current.revision, now)
                self.last_outcome, self.last_error = outcome, None
                return outcome
            changed = restart_only_changes(current.policy, new.policy)
            if changed:
                return self._failed(
                    trigger,
                    now,
                    f"{self._path}: changes to {', '.join(changed)} take effect only on "
                    "restart; the running policy was kept (restart the node to apply them)",
                )
            self._svc.budget.update_cost(new.policy.cost)
            self._svc.active = new  # the atomic swap: requests read `active` once
            self.reloads += 1
            self.last_error = None
            self.last_outcome = ReloadOutcome("applied", trigger, new.revision, now)
            log.info(
                "policy_reloaded",
                policy_revision=new.revision,
                reason=trigger,
                previous_revision=current.revision,
            )
            return self.last_outcome

    async def watch(self, stop: asyncio.Event) -> None:
        """Poll the file every `poll_interval_s` until `stop` is set; reload when its mtime,
        size or content hash changed and has then stayed the same for one more poll (so a
        file still being written is not loaded half-way)."""
        pending: tuple[int, int, str] | None = None
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=self._interval)
                return
            except TimeoutError:
                pass
            sig = await asyncio.to_thread(_signature, self._path)
            if sig == self._seen:
                pending = None
                continue
            if sig != pending:  # changed since the last poll: let it settle one interval
                pending = sig
                continue
            self._seen, pending = sig, None
            await self.reload("file_change")

    def _load(self, current: ActivePolicy, now: float) -> ActivePolicy | None:
        raw = self._path.read_bytes()
        text = raw.decode("utf-8")
        if policy_revision(text) == current.revision:
            return None
        return activate(self._path, now, reuse=current, text=text, store=self._store)

    def _failed(self, trigger: str, now: float, error: str) -> ReloadOutcome:
        self.failures += 1
        self.last_error = error
        self.last_outcome = ReloadOutcome("failed", trigger, self._svc.active.revision, now, error)
        log.warning(
            "policy_reload_failed",
            reason=trigger,
            policy_revision=self._svc.active.revision,
            error=error,
        )
        return self.last_outcome


def restart_only_changes(old: Policy, new: Policy) -> list[str]:
    """Dotted keys outside the live sections (`tasks`, `cost`) whose values differ. Pure."""
    a, b = old.model_dump(mode="json"), new.model_dump(mode="json")
    out: list[str] = []
    for section in sorted(set(a) | set(b)):
        if section not in LIVE_SECTIONS and a.get(section) != b.get(section):
            out.extend(_diff_keys(a.get(section), b.get(section), section))
    return out


def _diff_keys(a: Any, b: Any, prefix: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.extend(_diff_keys(a.get(key), b.get(key), f"{prefix}.{key}"))
        return out
    return [prefix]


def _signature(path: Path) -> tuple[int, int, str]:
    """(mtime_ns, size, sha256) of the file; zeros if it cannot be read right now."""
    try:
        st = os.stat(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return (0, 0, "")
    return (st.st_mtime_ns, st.st_size, digest)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return f"cannot read policy file: {exc.strerror or exc}"
    if isinstance(exc, UnicodeDecodeError):
        return f"policy file is not UTF-8 text: {exc.reason}"
    return str(exc)
