"""The edge node's composition root: `Node` builds every part from settings and owns them.

The only place that wires real stores, the cloud link, clocks and workers together. The
HTTP app (`edge_node.http.app`), the CLI (`edgeroute edge serve`, `edgeroute queue
drain`), the demo and the benchmarks all build the node here:

    node = Node(settings)        # policy validated, bundles loaded, stores opened
    await node.start()           # sync worker, policy reloader, model updater
    ...                          # node.service answers requests; node.status() reports
    await node.stop()            # background work stopped, client and stores closed

A node is the only writer of its data dir (`storage.data_dir_lock`) from construction to
`stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx
import structlog

from edge_node.cloud.client import CloudClient
from edge_node.cloud.connectivity import ConnectivityMonitor
from edge_node.cloud.http_link import transport as link_transport
from edge_node.escalation import Escalation
from edge_node.lifecycle.active_policy import ActivePolicy, activate
from edge_node.lifecycle.model_store import ModelStore
from edge_node.lifecycle.model_updater import ModelUpdater
from edge_node.lifecycle.policy_reloader import PolicyReloader
from edge_node.observe.decision_log import DecisionLog, sync_recorder
from edge_node.observe.metrics import EdgeMetrics, NodeLevels
from edge_node.service import EdgeService
from edge_node.settings import EdgeSettings
from edge_node.storage.budget_store import BudgetStore
from edge_node.storage.data_dir_lock import hold, release
from edge_node.storage.queue_store import DurableQueue
from edge_node.storage.result_store import ResultStore
from edge_node.sync.worker import SyncWorker
from router.budget import all_limits, budget_status
from router.log_setup import sampler

log = structlog.get_logger("edgeroute.edge")
_STOP_WAIT_S = 5.0


class Node:
    """One edge node: its stores, cloud link, escalation step, request service, sync worker,
    policy reloader and model updater (attributes of the same names). Build it, `start()`
    it on the event loop that will serve it, `stop()` it there. Not thread-safe."""

    def __init__(
        self,
        settings: EdgeSettings,
        *,
        role: str = "edge node",
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """Validate the policy and load every task's bundle (a version installed in the
        model store wins over the policy's), then take the data dir for `role` and open
        its stores. Raises PolicyError (also for unusable `cloud.tls` files) / BundleError
        before anything is opened, and DataDirBusy if another process writes the data dir.
        `transport` replaces the cloud client's HTTP transport (tests)."""
        self.settings = settings
        self.store = ModelStore(settings.data_dir / "models")
        active = activate(settings.policy_path, clock(), store=self.store)
        transport = transport or link_transport(active.policy.cloud)  # reads the TLS files
        data = settings.data_dir
        data.mkdir(parents=True, exist_ok=True)
        hold(data, role)
        try:
            self._build(settings, active, clock, transport)
        except BaseException:
            for name in ("decisions", "queue", "results", "budget"):
                if hasattr(self, name):
                    getattr(self, name).close()
            release(data)
            raise
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    def _build(
        self,
        settings: EdgeSettings,
        active: ActivePolicy,
        clock: Callable[[], float],
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        """Open the stores and wire the parts (the constructor's second half)."""
        policy = active.policy
        data = settings.data_dir
        self._clock = clock
        token = os.environ.get(policy.cloud.token_env) if policy.cloud.token_env else None
        self.monitor = ConnectivityMonitor(
            policy.cloud.breaker, clock=time.monotonic, rng=random.random
        )
        self.client = CloudClient(
            policy.cloud,
            node_id=policy.node.id,
            token=token,
            base_url=settings.cloud_url,
            transport=transport,
        )
        self.metrics = EdgeMetrics()
        self.metrics.policy_reloads.labels("ok").inc()
        for task in active.models:
            self.metrics.model_loads.labels(task, "ok").inc()
        for task in active.model_errors:  # an installed version failed; its policy bundle serves
            self.metrics.model_loads.labels(task, "error").inc()
        self.queue = DurableQueue(data / "queue", policy.queue, clock=clock)
        self.results = ResultStore(data / "results", policy.queue.fsync)
        self.budget = BudgetStore(data / "budget", policy.cost, clock=clock)
        self.decisions = DecisionLog(data / "decisions", clock=clock)
        self.escalation = Escalation(
            self.client, self.monitor, self.budget, self.metrics, clock=clock
        )
        sample = sampler(settings.log_sample_rate, random.Random().random)
        self.service = EdgeService(
            active=active,
            queue=self.queue,
            results=self.results,
            escalation=self.escalation,
            decisions=self.decisions,
            metrics=self.metrics,
            new_id=self.client.ids.new,
            clock=clock,
            sample=sample,
        )
        cloud = policy.cloud
        self.sync = SyncWorker(
            self.queue,
            self.results,
            self.escalation,
            lambda: self.service.active.policy,
            clock=clock,
            log=log,
            deadline_s=cloud.request_timeout_ms / 1000 * cloud.retry.max_attempts,
            on_synced=sync_recorder(self.decisions, lambda: self.service.active.revision),
            sample=sample,
        )
        self.reloader = PolicyReloader(self.service, settings.policy_path, store=self.store)
        self.updater = ModelUpdater(
            self.service, self.store, settings.policy_path, self.reloader.lock
        )
        self.metrics.watch(self.levels)

    async def start(self, *, sync: bool | None = None) -> None:
        """Start the background work on the running loop: the policy reloader's and the
        model updater's watches, SIGHUP as a reload trigger (where the loop supports
        signals), and the sync worker unless `sync` is False (default: the settings'
        `run_sync_worker`)."""
        run_sync = self.settings.run_sync_worker if sync is None else sync
        self._tasks = [
            asyncio.create_task(self.reloader.watch(self._stop)),
            asyncio.create_task(self.updater.watch(self._stop)),
        ]
        if run_sync:
            self._tasks.append(asyncio.create_task(self.sync.run_forever(self._stop)))
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, lambda: asyncio.ensure_future(self.reloader.reload("sighup"))
            )
        active = self.service.active
        log.info("edge_ready", policy_revision=active.revision, models=active.model_versions)

    async def stop(self) -> None:
        """Stop the background work (each given `_STOP_WAIT_S` to finish its round), then
        close the cloud client, the stores and the decision log, and give up the data dir.
        Idempotent; never raises for a worker that failed."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=_STOP_WAIT_S)
        self.updater.close()
        await self.client.aclose()
        self.close_stores()

    def close_stores(self) -> None:
        """Close the decision log and the stores and give up the data dir (what `stop`
        does after the background work; for callers that never started the node)."""
        self.decisions.close()
        self.queue.close()
        self.results.close()
        self.budget.close()
        release(self.settings.data_dir)

    def status(self) -> dict[str, Any]:
        """The `/v1/status` body: connectivity, queue, results, sync drains, policy (with the
        reloader's state), models and their updates, cloud calls and cost, budgets. Reads
        the budget store once. Cheap; safe to poll from the loop. Times are UNIX seconds,
        ages are seconds."""
        now = self._clock()
        active = self.service.active
        pol = active.policy
        ledger = self.budget.ledger(now)
        spent = self.budget.snapshot(now)
        return {
            "node_id": pol.node.id,
            "connectivity": self.monitor.snapshot().to_dict(now - time.monotonic()),
            "queue": {
                "depth": self.queue.depth,
                "bytes": self.queue.bytes,
                "oldest_age_s": self.queue.oldest_age(now),
                "quarantined": self.queue.shelf.count,
            },
            "results": self.results.counts(),
            "sync": {"drains": self.sync.drains},
            "policy": {
                "revision": active.revision,
                "source": active.source,
                "loaded_at": active.loaded_at,
                **self.reloader.snapshot(),
            },
            "models": active.model_versions,
            "model_errors": active.model_errors,
            "models_update": self.updater.snapshot(),
            "cloud": {
                "url": self.client.base_url,
                "calls": self.escalation.calls,
                "calls_today": spent.calls,
                "cost_today": round(spent.spent, 6),
                "currency": pol.cost.currency,
                "daily_budget": pol.cost.daily_budget,
            },
            "budgets": budget_status(ledger, all_limits(pol.cost, pol.tasks), now),
        }

    def levels(self) -> NodeLevels:
        """The live levels `/metrics` exposes. Reads the budget store once. Safe to call
        from the scraping thread."""
        now = self._clock()
        active = self.service.active
        cost = active.policy.cost
        spent = self.budget.snapshot(now)
        snap = self.monitor.snapshot().to_dict()
        inf = float("inf")
        return NodeLevels(
            queue_depth=self.queue.depth,
            queue_bytes=self.queue.bytes,
            queue_oldest_age_s=float(self.queue.oldest_age(now)),
            breaker=str(snap["breaker"]),
            connectivity=str(snap["state"]),
            budget_calls=spent.calls,
            budget_spent=spent.spent,
            budget_calls_left=inf if cost.daily_calls is None else cost.daily_calls - spent.calls,
            budget_money_left=inf if cost.daily_budget is None else cost.daily_budget - spent.spent,
            currency=cost.currency,
            policy_revision=active.revision,
            model_versions=dict(active.model_versions),
            results=dict(self.results.counts()),
            credentials_rejected=snap["credentials"] == "rejected",
        )
