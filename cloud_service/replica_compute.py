"""The ingress replica's model runs: the models loaded in this replica (default), or one
`TaskModel` deployment per task reached through DeploymentHandles (`per_task_deployments`).

`ReplicaCompute.compute_for` gives `rerank_flow.answer_with_dedup` the function that
computes a call's items: single-item calls share a `@serve.batch` method when they reach
the compute step together (see `_compute_single`), anything else is one model run per task.
Importing this module imports ray; import it only where Ray is wanted.
"""

# No `from __future__ import annotations`: Serve inspects the `@serve.batch` method.

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ray import serve
from ray.serve.exceptions import BackPressureError

from cloud_service.metrics import ReplicaMetrics
from cloud_service.rerank_flow import (
    Answer,
    Compute,
    ReadyGroup,
    RerankModel,
    failure,
    rerank_by_task,
)
from cloud_service.settings import CloudServiceSettings
from router.errors import RetryableRejection
from router.wire import RerankItem

INLINE_COMPUTE_S = 0.002
"""A model call expected to take less than this runs on the replica's event loop: handing
it to a thread costs more CPU than the call itself. Longer ones run in a worker thread so
the loop keeps serving. The expectation is a moving average of seconds per item. The bound
is set above the cost of a loaded replica's typical batch: most of a batch's time is
GIL-bound result building, which a thread hop does not take off the loop, so sending those
batches to a thread cost more than it freed (figures in docs/performance.md)."""


class CloudOverloaded(RetryableRejection):
    """A task deployment refused the call (its `max_queued_requests` is reached)."""

    code = "overloaded"

    def __init__(self, message: str, *, status: int, retry_after_s: float) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.status = status


class ReplicaCompute:
    """Computes re-rank items in an ingress replica, with its batch counters.

    `handles` None: the models of `cfg.bundles_dir` are loaded here (raises BundleError
    for a bad bundle); otherwise each task's items go to `handles[task]` (a `TaskModel`
    handle) and the tasks without a handle fail per item (`unknown_task`). `busy()` says
    whether other calls are in progress in the replica. Must be used from the replica's
    event loop.
    """

    def __init__(
        self,
        cfg: CloudServiceSettings,
        metrics: ReplicaMetrics,
        handles: Mapping[str, Any] | None,
        busy: Callable[[], bool],
    ) -> None:
        self._cfg = cfg
        self._metrics = metrics
        self._busy = busy
        self._handles: dict[str, Any] = dict(handles or {})
        self._models: dict[str, RerankModel] = {}
        if handles is None:
            from cloud_service.model import load_cloud_models

            self._models = dict(load_cloud_models(cfg.bundles_dir))
        self._ready = ReadyGroup()
        """Single-item calls at the compute step (see `_compute_single`)."""
        self.batches = 0
        """Local model runs so far (a `@serve.batch` batch or a call's items)."""
        self.batched_items = 0
        """Items of those runs."""
        self.max_batch_seen = 0
        """Most items in one of those runs."""
        self._item_cost_s = self._measure_item_cost()
        batched: Any = self.compute_one
        batched.set_max_batch_size(cfg.max_batch_size)
        batched.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    def compute_for(self, items: Sequence[RerankItem]) -> Compute:
        """The function computing (a subset of) one call's `items`: a single-item call's
        item may join the `@serve.batch` when batching is on and the models are local
        (`_compute_single`); anything else is computed here, one model run per task (or
        one handle call per task in per-task mode)."""
        if len(items) == 1 and self._cfg.batching and not self._handles:
            return self._compute_single
        return self._compute

    async def versions(self) -> dict[str, str]:
        """Task -> model version of every served task, sorted by task (per-task mode: asked
        of each task deployment)."""
        if self._handles:
            tasks = {}
            for task in sorted(self._handles):
                tasks[task] = await self._handles[task].version.remote()
            return tasks
        return {task: m.version for task, m in sorted(self._models.items())}

    def check_health(self) -> None:
        """Raises BundleError unless every local ONNX session runs (models without a
        `self_check` are skipped)."""
        for model in self._models.values():
            check = getattr(model, "self_check", None)
            if check is not None:
                check()

    def _measure_item_cost(self) -> float:
        """Seconds per item of the slowest local model (best of 3 one-item runs)."""
        cost = 0.0
        for model in self._models.values():
            check = getattr(model, "self_check", None)
            if check is None:
                continue
            runs = []
            for _ in range(3):
                started = time.perf_counter()
                check()
                runs.append(time.perf_counter() - started)
            cost = max(cost, min(runs))
        return cost

    def _timed_rerank(self, items: list[RerankItem]) -> list[Answer]:
        started = time.perf_counter()
        answers = rerank_by_task(self._models, items)
        per_item = (time.perf_counter() - started) / max(1, len(items))
        self._item_cost_s = 0.8 * self._item_cost_s + 0.2 * per_item
        return answers

    async def _run_local(self, items: list[RerankItem]) -> list[Answer]:
        if self._cfg.slow_model_s > 0:
            await asyncio.sleep(self._cfg.slow_model_s)
        self.batches += 1
        self.batched_items += len(items)
        self.max_batch_seen = max(self.max_batch_seen, len(items))
        for task in {it.task for it in items}:
            self._metrics.batch(task, sum(1 for it in items if it.task == task))
        if self._item_cost_s * len(items) < INLINE_COMPUTE_S:
            return self._timed_rerank(items)
        return await asyncio.to_thread(self._timed_rerank, items)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def compute_one(self, items: list[RerankItem]) -> list[Answer]:
        """Compute the items of concurrent single-item calls together: one model run per
        task for the batch. Only the model run is batched: the claims of those calls were
        merged by the store client already, and holding a batch open across store round
        trips would serialise them (Serve runs one batch at a time)."""
        return await self._run_local(items)

    async def _compute(self, items: list[RerankItem]) -> list[Answer]:
        if self._handles:
            return await self._compute_remote(items)
        return await self._run_local(items)

    async def _compute_single(self, items: list[RerankItem]) -> list[Answer]:
        """The item to compute of a single-item call: through `@serve.batch` when other
        calls reach this step with it (company to batch with), else computed at once.

        With `batch_wait_timeout_s` 0 a batch is whatever is queued when the batch task
        runs, and the batch machinery (queue, batch task, Serve's batch metrics) costs a
        call more than its model run, so a batch of one is pure overhead. Claimed calls
        arrive here together when one store call answered their claims; calls computed
        without a claim (`answer_with_dedup(claim=False)`) arrive as their bodies are read,
        together only when the proxy delivered them in the same turn of the event loop.
        Each marks itself ready and yields once to the event loop, so the others of its
        group mark themselves too; if it is then not alone, they go through `@serve.batch`
        and share one model run, otherwise it is computed at once. A lone call (no other
        call in progress) skips even that yield, so batching on is not slower than off at
        one connection. With a batch wait > 0, every call that has company in the replica
        joins the batch."""
        if len(items) != 1:
            return await self._run_local(items)
        if not self._busy() and self._cfg.batch_wait_timeout_s == 0:
            return await self._run_local(items)
        if self._cfg.batch_wait_timeout_s > 0:
            return [await self.compute_one(items[0])]

        async def together() -> list[Answer]:
            return [await self.compute_one(items[0])]

        return await self._ready.run(lambda: self._run_local(items), together)

    async def _compute_remote(self, items: list[RerankItem]) -> list[Answer]:
        answers: list[Answer | None] = [None] * len(items)
        by_task: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            by_task.setdefault(item.task, []).append(i)
        calls = []
        for task, indexes in by_task.items():
            handle = self._handles.get(task)
            if handle is None:
                for i in indexes:
                    answers[i] = failure(
                        items[i], "unknown_task", f"task {task!r} is not served here", "task"
                    )
                continue
            calls.append((indexes, handle.rerank.remote([items[i] for i in indexes])))
        for indexes, call in calls:
            try:
                got: list[Answer] = await call
            except BackPressureError as exc:
                raise CloudOverloaded(
                    "the cloud re-ranker is overloaded, retry later",
                    status=self._cfg.overload_status,
                    retry_after_s=self._cfg.retry_after_s,
                ) from exc
            for i, answer in zip(indexes, got, strict=True):
                answers[i] = answer
        return [a for a in answers if a is not None]
