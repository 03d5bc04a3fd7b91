"""The edge node's request handling: infer -> score -> decide -> carry the decision out.

`EdgeService` owns no I/O of its own: stores, the cloud client, the connectivity monitor,
the budget, the decision log and the clocks are injected (see `edge_node.factory`).
All methods run on one asyncio event loop; disk writes that must precede a response
(the durable queue) run in a worker thread so the loop keeps serving.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from edge_node.active_policy import ActivePolicy
from edge_node.api_models import InferRequest
from edge_node.budget_store import BudgetStore
from edge_node.cloud_client import CloudClient
from edge_node.connectivity import ConnectivityMonitor
from edge_node.decision_log import DecisionLog, DecisionRecord
from edge_node.metrics import EdgeMetrics
from edge_node.queue_store import DurableQueue, QueuedItem
from edge_node.result_store import ResultStore
from router.candidates import top_k
from router.decision import Decision, LocalResult, NodeState, decide, on_cloud_failure
from router.errors import (
    CloudError,
    CloudRejected,
    CloudTimeout,
    NotFound,
    QueueFull,
    UnknownTask,
)
from router.inputs import coerce_inputs
from router.policy import TaskPolicy
from router.scores import all_scores
from router.wire import RerankFailure, RerankItem, RerankResult

log = structlog.get_logger("edgeroute.edge")


@dataclass(frozen=True)
class Answer:
    """What the HTTP layer sends back: a status code and a JSON-able body."""

    status: int
    body: dict[str, Any]


class EdgeService:
    """Routes requests for one edge node. Not thread-safe: use from one event loop."""

    def __init__(
        self,
        *,
        active: ActivePolicy,
        queue: DurableQueue,
        results: ResultStore,
        client: CloudClient,
        monitor: ConnectivityMonitor,
        budget: BudgetStore,
        decisions: DecisionLog,
        metrics: EdgeMetrics,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.perf_counter,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.active = active
        self.queue = queue
        self.results = results
        self.client = client
        self.monitor = monitor
        self.budget = budget
        self.decisions = decisions
        self.metrics = metrics
        self._clock = clock
        self._monotonic = monotonic
        self._new_id = new_id
        self.cloud_calls = 0

    # ---- the request path -------------------------------------------------------------

    async def infer(self, req: InferRequest) -> Answer:
        """Answer one request. Raises EdgerouteError subclasses for client faults (4xx);
        every accepted request ends answered, queued durably, or explicitly rejected."""
        t0 = self._monotonic()
        active = self.active  # read once: this request sees one whole policy
        task = active.policy.tasks.get(req.task)
        model = active.models.get(req.task)
        if task is None or model is None:
            raise UnknownTask(
                f"unknown task {req.task!r}; this node serves: "
                f"{', '.join(sorted(active.policy.tasks))}",
                field="task",
            )
        x = coerce_inputs(req.inputs, model.input_spec)
        t_inf = self._monotonic()
        probs = model.predict(x.reshape(1, -1))[0].tolist()
        self.metrics.inference_seconds.observe(self._monotonic() - t_inf)
        local = LocalResult(top_k(probs, model.labels, task.top_k), all_scores(probs))
        rid = req.request_id or self._new_id()
        deadline_ms = float(req.deadline_ms or task.deadline_ms)
        now = self._clock()

        decision = self._decide(local, task, now, deadline_ms - self._elapsed_ms(t0))
        cloud: RerankResult | None = None
        if decision.escalate:
            decision, cloud = await self._escalate(
                decision, local, task, req.task, rid, x.tolist(), deadline_ms, t0, now
            )
        if decision.reject:
            from router.errors import BudgetRejected

            raise BudgetRejected(
                "the cost budget for cloud calls is exhausted and the policy "
                "rejects requests that need the cloud",
                retry_after_s=60.0,
            )
        if decision.enqueue:
            decision = await self._enqueue(
                decision, local, task, req.task, rid, x.tolist(), model.version, now
            )
        return self._answer(req.task, rid, decision, local, cloud, model.version, t0)

    def _decide(
        self,
        local: LocalResult,
        task: TaskPolicy,
        now: float,
        left_ms: float,
        *,
        offline: bool = False,
    ) -> Decision:
        state = NodeState("offline" if offline else self.monitor.state, self.budget.snapshot(now))
        return decide(local, state, task, self.active.policy.cost, now, left_ms)

    async def _escalate(
        self,
        decision: Decision,
        local: LocalResult,
        task: TaskPolicy,
        task_name: str,
        rid: str,
        inputs: list[float],
        deadline_ms: float,
        t0: float,
        now: float,
    ) -> tuple[Decision, RerankResult | None]:
        if not self.monitor.allow_request():
            return self._decide(local, task, now, 0.0, offline=True), None
        reservation = self.budget.reserve(now)
        if reservation is None:  # lost the race for the last unit of budget
            return self._decide(local, task, now, deadline_ms - self._elapsed_ms(t0)), None
        item = RerankItem(
            task=task.cloud_task or task_name,
            request_id=rid,
            inputs=inputs,
            candidates=[c.label for c in local.candidates],
        )
        left_s = (deadline_ms - self._elapsed_ms(t0)) / 1000.0
        t_call = self._monotonic()
        try:
            result = (await self.client.rerank([item], deadline_s=left_s, request_id=rid))[0]
            if isinstance(result, RerankFailure):
                raise CloudRejected(f"{result.error.code}: {result.error.message}")
        except CloudError as exc:
            reservation.release()
            if not isinstance(exc, CloudRejected):
                self.monitor.record_failure(exc.retry_after_s)
            self.metrics.cloud_errors.labels(task_name, exc.code).inc()
            log.info("cloud_failed", request_id=rid, task=task_name, error=exc.code)
            return on_cloud_failure(decision, task, timed_out=isinstance(exc, CloudTimeout)), None
        finally:
            self.metrics.cloud_seconds.observe(self._monotonic() - t_call)
        reservation.commit()
        self.monitor.record_success()
        self.cloud_calls += 1
        return decision, result

    async def _enqueue(
        self,
        decision: Decision,
        local: LocalResult,
        task: TaskPolicy,
        task_name: str,
        rid: str,
        inputs: list[float],
        version: str,
        now: float,
    ) -> Decision:
        item = QueuedItem(
            request_id=rid,
            task=task_name,
            cloud_task=task.cloud_task or task_name,
            inputs=inputs,
            candidates=[c.label for c in local.candidates],
            edge_label=local.label,
            edge_score=local.candidates[0].score,
            edge_candidates=[(c.label, c.score) for c in local.candidates],
            model_version=version,
            enqueued_at=now,
            reason=decision.reason,
        )
        try:
            dropped = await asyncio.to_thread(self.queue.put, item)
        except QueueFull:
            if decision.route == "queued":
                raise
            # A failed escalation answers locally; verification is best-effort when full.
            log.warning("verify_not_queued", request_id=rid, task=task_name, reason="queue_full")
            return Decision("edge", decision.reason, decision.confidence, decision.threshold)
        for dropped_id in dropped:
            await asyncio.to_thread(self.results.put_expired, dropped_id, "queue_full")
        self.metrics.dropped.inc(len(dropped))
        return decision

    def _answer(
        self,
        task_name: str,
        rid: str,
        decision: Decision,
        local: LocalResult,
        cloud: RerankResult | None,
        version: str,
        t0: float,
    ) -> Answer:
        latency_ms = self._elapsed_ms(t0)
        if cloud is not None:
            label: str | None = cloud.label
            score: float | None = cloud.score
            cands = [{"label": c.label, "score": c.score} for c in cloud.candidates]
            version = cloud.model_version
        elif decision.answer_now:
            label, score = local.label, local.candidates[0].score
            cands = [{"label": c.label, "score": c.score} for c in local.candidates]
        else:
            label, score, cands = None, None, []
        self.metrics.requests.labels(task_name, decision.route, decision.reason).inc()
        self.metrics.latency.labels(decision.route).observe(latency_ms / 1000.0)
        self.decisions.write(
            DecisionRecord(
                ts=self._clock(),
                request_id=rid,
                task=task_name,
                policy_revision=self.active.revision,
                model_version=version,
                scores=local.scores,
                edge_candidates=[{"label": c.label, "score": c.score} for c in local.candidates],
                route=decision.route,
                reason=decision.reason,
                final_label=label,
                cloud_label=cloud.label if cloud is not None else None,
                latency_ms=latency_ms,
            )
        )
        body: dict[str, Any] = {
            "request_id": rid,
            "task": task_name,
            "route": decision.route,
            "reason": decision.reason,
            "label": label,
            "score": score,
            "candidates": cands,
            "model_version": version,
            "latency_ms": round(latency_ms, 3),
            "final": decision.final,
            "status": "answered" if decision.answer_now or cloud is not None else "accepted",
        }
        return Answer(200 if body["status"] == "answered" else 202, body)

    def _elapsed_ms(self, t0: float) -> float:
        return (self._monotonic() - t0) * 1000.0

    # ---- results and status -------------------------------------------------------------

    def result(self, request_id: str) -> dict[str, Any]:
        """The state of a queued request; raises NotFound for an id this node never queued
        (requests answered finally at once are not stored)."""
        rec = self.results.get(request_id)
        if rec is not None:
            return _flatten_result(rec)
        item = self.queue.get(request_id)
        if item is not None:
            return {
                "request_id": request_id,
                "status": "pending",
                "task": item.task,
                "provisional": {
                    "label": item.edge_label,
                    "score": item.edge_score,
                    "model_version": item.model_version,
                },
            }
        raise NotFound(
            f"no queued request with id {request_id!r} (requests answered at once are not stored)",
            field="request_id",
        )

    def status(self) -> dict[str, Any]:
        """A snapshot for `/v1/status` (cheap; safe to poll)."""
        now = self._clock()
        active = self.active
        spent = self.budget.snapshot(now)
        return {
            "node_id": active.policy.node.id,
            "connectivity": self.monitor.snapshot().to_dict(),
            "queue": {
                "depth": self.queue.depth,
                "bytes": self.queue.bytes,
                "oldest_age_s": self.queue.oldest_age(now),
            },
            "results": self.results.counts(),
            "policy": {
                "revision": active.revision,
                "source": active.source,
                "loaded_at": active.loaded_at,
            },
            "models": active.model_versions,
            "cloud": {
                "url": self.client.base_url,
                "calls": self.cloud_calls,
                "calls_today": spent.calls,
                "cost_today": round(spent.spent, 6),
                "currency": active.policy.cost.currency,
                "daily_budget": active.policy.cost.daily_budget,
            },
        }


_RESULT_FIELDS = ("label", "score", "candidates", "model_version", "route", "reason")


def _flatten_result(rec: dict[str, Any]) -> dict[str, Any]:
    """A result-store record in the shape of the API's ResultResponse."""
    out = {
        k: rec.get(k)
        for k in ("request_id", "status", "task", "provisional", "reason", "error")
        if rec.get(k) is not None
    }
    final = rec.get("result")
    if isinstance(final, dict):
        out.update({k: final[k] for k in _RESULT_FIELDS if k in final})
    return out
