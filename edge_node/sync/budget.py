"""Charging synced items to the node's budget ledger, so cost reporting counts every cloud
re-rank: live escalations (charged by the service) and queue drains (charged here)."""

from __future__ import annotations

import time
from collections.abc import Callable

from edge_node.storage.budget_store import BudgetStore
from edge_node.storage.queue_store import QueuedItem
from edge_node.sync.worker import Charge, Reserve
from router.budget import limits_for
from router.policy import Policy


def budget_reserver(
    budget: BudgetStore,
    policy: Callable[[], Policy],
    *,
    clock: Callable[[], float] = time.time,
) -> Reserve:
    """A `SyncWorker` reserve hook: one call at `cost.price_per_call` against the node's
    limits and the item's task limits under the policy in force (`policy()`; node limits
    only if the task was removed by a reload). Returns None when any budget is exhausted.
    Thread-safe as `BudgetStore.reserve` is; raises `BudgetStoreError` on storage failures."""

    def reserve(item: QueuedItem) -> Charge | None:
        current = policy()
        cost = current.cost
        task = current.tasks.get(item.task)
        limits = limits_for(cost, task, item.task if task is not None else None)
        return budget.reserve(clock(), limits=limits, price=cost.price_per_call)

    return reserve
