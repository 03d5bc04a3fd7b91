"""Builds an `EdgeService` and its components from settings (the only place that wires
real stores, clients and clocks together)."""

from __future__ import annotations

import os
import random
import time

from edge_node.cloud.client import CloudClient
from edge_node.cloud.connectivity import ConnectivityMonitor
from edge_node.lifecycle.active_policy import activate
from edge_node.lifecycle.model_store import ModelStore
from edge_node.observe.decision_log import DecisionLog
from edge_node.observe.metrics import EdgeMetrics
from edge_node.service import EdgeService
from edge_node.settings import EdgeSettings
from edge_node.storage.budget_store import BudgetStore
from edge_node.storage.data_dir_lock import hold
from edge_node.storage.queue_store import DurableQueue
from edge_node.storage.result_store import ResultStore
from router.log_setup import sampler


def model_store(settings: EdgeSettings) -> ModelStore:
    """The node's model store (`DATA/models`: installed versions, update state, drop-ins)."""
    return ModelStore(settings.data_dir / "models")


def build_service(settings: EdgeSettings) -> EdgeService:
    """Validate the policy, load bundles (a version installed in the model store wins over
    the policy's bundle), open the stores in the data dir.

    Raises PolicyError / BundleError before anything is opened if the policy is invalid,
    and DataDirBusy if another process (a node, `queue drain|purge`) writes the data dir;
    the node then holds the dir's writer lock until its process exits.
    """
    active = activate(settings.policy_path, time.time(), store=model_store(settings))
    policy = active.policy
    data = settings.data_dir
    data.mkdir(parents=True, exist_ok=True)
    hold(data, "edge node")  # one writer per data dir: a second node or queue drain is refused
    token = os.environ.get(policy.cloud.token_env) if policy.cloud.token_env else None
    monitor = ConnectivityMonitor(policy.cloud.breaker, clock=time.monotonic, rng=random.random)
    client = CloudClient(
        policy.cloud, node_id=policy.node.id, token=token, base_url=settings.cloud_url
    )
    metrics = EdgeMetrics()
    metrics.policy_reloads.labels("ok").inc()
    for task in active.models:
        metrics.model_loads.labels(task, "ok").inc()
    for task in active.model_errors:  # an installed version failed; its policy bundle serves
        metrics.model_loads.labels(task, "error").inc()
    return EdgeService(
        active=active,
        queue=DurableQueue(data / "queue", policy.queue, clock=time.time),
        results=ResultStore(data / "results", policy.queue.fsync),
        client=client,
        monitor=monitor,
        budget=BudgetStore(data / "budget", policy.cost, clock=time.time),
        decisions=DecisionLog(data / "decisions", clock=time.time),
        metrics=metrics,
        sample=sampler(settings.log_sample_rate, random.Random().random),
    )
