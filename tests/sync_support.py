"""Building a SyncWorker around the node's escalation step for tests that bring their own
queue, result store, fake cloud, breaker and (optionally) a per-call budget fake."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from edge_node.escalation import Escalation
from edge_node.observe.metrics import EdgeMetrics
from edge_node.sync.worker import SyncWorker
from router.budget import BudgetLedger
from router.policy import CostSettings, SyncSettings


class _Client:
    """A test cloud (rerank without `resend`, maybe no `health`) as the step's client."""

    def __init__(self, cloud: Any) -> None:
        self.cloud = cloud

    async def rerank(
        self, items: Any, *, deadline_s: float, request_id: str | None = None, resend: bool = False
    ) -> Any:
        return await self.cloud.rerank(items, deadline_s=deadline_s, request_id=request_id)

    async def health(self, timeout_s: float) -> bool:
        return bool(await self.cloud.health(timeout_s))


class _Free:
    """A charge that costs nothing (no budget configured)."""

    def commit(self) -> None:
        """Nothing to keep."""

    def release(self) -> bool:
        """Nothing to give back."""
        return True


class LedgerBudget:
    """The budget store's surface the escalation step uses, over a test ledger whose
    `reserve(item)` returns a charge or None (None ledger: unlimited)."""

    def __init__(self, ledger: Any = None) -> None:
        self.ledger = ledger

    def reserve(self, now: float, *, limits: Any, price: float) -> Any:
        """One charge from the ledger (or a free one)."""
        return _Free() if self.ledger is None else self.ledger.reserve(None)

    def reserve_many(self, now: float, calls: Any) -> list[Any]:
        """`reserve` for each call, in order."""
        return [self.reserve(now, limits=lims, price=price) for lims, price in calls]

    def known_ledger(self) -> BudgetLedger:
        """An empty ledger (the fake's budget has no named limits)."""
        return BudgetLedger()


def sync_worker(
    queue: Any,
    results: Any,
    cloud: Any,
    monitor: Any,
    settings: SyncSettings,
    *,
    ledger: Any = None,
    cost: CostSettings | None = None,
    **kw: Any,
) -> SyncWorker:
    """A SyncWorker draining `queue` through an escalation step over `cloud`, `monitor`
    and `ledger` (see LedgerBudget), under a policy with `settings` and no tasks."""
    client = cloud if hasattr(cloud, "ids") else _Client(cloud)
    step = Escalation(client, monitor, LedgerBudget(ledger), EdgeMetrics())  # type: ignore[arg-type]
    policy = SimpleNamespace(sync=settings, cost=cost or CostSettings(), tasks={})
    return SyncWorker(queue, results, step, lambda: policy, **kw)  # type: ignore[arg-type,return-value]
