"""The edge node's request pipeline: prepare, infer, decide, carry the decision out.

One path: a single request is a batch of one. For a batch, each task's model runs once
on the task's valid items, every item is decided on its own (`router.decision.decide`),
the items that escalate go to the cloud in one call through the escalation step
(`edge_node.escalation`), and what follows each outcome is the core's decision
(`router.outcome.after`); the service only carries decisions out: answer, queue durably
(before answering), or refuse.

`EdgeService` owns no I/O of its own: stores, the escalation step, the decision log,
the metrics and the clocks are injected by the node (`edge_node.node.Node`). All methods
run on one asyncio event loop; the queue write that must precede a response runs in a
worker thread so the loop keeps serving.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import orjson
import structlog

from edge_node.answers import (
    Answer,
    answer_body,
    decision_record,
    flatten_result,
    item_error,
    rejection,
)
from edge_node.escalation import Call, Escalation
from edge_node.lifecycle.active_policy import ActivePolicy
from edge_node.observe.decision_log import DecisionLog
from edge_node.observe.metrics import EdgeMetrics
from edge_node.observe.observer import RequestObserver
from edge_node.prepared import PreparedItem, prepare
from edge_node.routed import Routed
from edge_node.storage.budget_store import BudgetStore
from edge_node.storage.queue_store import DurableQueue
from edge_node.storage.queued_item import QueuedItem, id_conflict
from edge_node.storage.result_store import ResultStore
from router.budget import limits_for
from router.decision import QUEUE_FULL, Decision, NodeState, decide
from router.edge_api import InferRequest
from router.errors import EdgerouteError, NotFound, QueueFull
from router.local_result import local_result, local_results_many
from router.outcome import after
from router.wire import RerankItem

log = structlog.get_logger("edgeroute.edge")


class EdgeService:
    """Routes requests for one edge node. Not thread-safe: use from one event loop."""

    def __init__(
        self,
        *,
        active: ActivePolicy,
        queue: DurableQueue,
        results: ResultStore,
        escalation: Escalation,
        decisions: DecisionLog,
        metrics: EdgeMetrics,
        new_id: Callable[[], str],
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.perf_counter,
        sample: Callable[[], bool] = lambda: False,
        observers: Sequence[RequestObserver] = (),
    ) -> None:
        """Wire the pipeline's parts. `new_id()` makes the id of a request that brings
        none; `sample()` says whether to write this request's log line; `observers` see
        every answered or accepted item (see `add_observer`)."""
        self.active = active
        self.queue = queue
        self.results = results
        self.escalation = escalation
        self.decisions = decisions
        self.metrics = metrics
        self._new_id = new_id
        self._clock = clock
        self._monotonic = monotonic
        self.sample = sample
        self._observers = list(observers)

    def add_observer(self, observer: RequestObserver) -> None:
        """Show `observer` every item answered or accepted from now on (after its decision
        record is written). Call from the service's event loop."""
        self._observers.append(observer)

    @property
    def budget(self) -> BudgetStore:
        """The node's budget store (the policy reloader gives it new cost settings)."""
        return self.escalation.budget

    # ---- the pipeline -----------------------------------------------------------------

    async def infer(self, req: InferRequest) -> Answer:
        """Answer one request: the pipeline on a batch of one. Raises its EdgerouteError
        (4xx: invalid, unknown task, queue full, budget rejected) instead of returning it;
        every accepted request ends answered, queued durably, or explicitly rejected."""
        out = (await self.run([req]))[0][1]
        if isinstance(out, EdgerouteError):
            raise out
        return out

    async def infer_batch(self, items: Sequence[InferRequest | EdgerouteError]) -> Answer:
        """Answer a batch: `{"results": [...]}` in item order, always status 200. Each entry
        is the body the item would get on its own, or an `ItemError`-shaped object for an
        item that would get a 4xx on its own (an entry given as an EdgerouteError is that
        item's error). Raises nothing for per-item faults."""
        outs = await self.run(items)
        body = [o.body if isinstance(o, Answer) else item_error(o, rid) for rid, o in outs]
        return Answer(200, {"results": body})

    async def run(
        self, requests: Sequence[InferRequest | EdgerouteError]
    ) -> list[tuple[str | None, Answer | EdgerouteError]]:
        """The pipeline (module doc) over `requests`; one outcome per request, in order: its
        request id (the node's when it brought none; None if it was refused before one was
        known) and its answer, or the error that refuses it. Reads the active policy once,
        so the whole batch is decided by one policy."""
        t0 = self._monotonic()
        active = self.active
        prepared = self._refuse_taken_ids(prepare(active, requests, self._new_id))
        pos = [i for i, p in enumerate(prepared) if isinstance(p, PreparedItem)]
        ok = [p for p in prepared if isinstance(p, PreparedItem)]
        routed = self.route(active, ok, t0) if ok else []
        refused: dict[int, EdgerouteError] = {}
        if any(r.decision.escalate for r in routed):
            await self._escalate(active, [r for r in routed if r.decision.escalate], t0)
        if any(r.decision.enqueue for r in routed):
            live = zip(pos, routed, strict=True)
            await self._enqueue(active, [(i, r) for i, r in live if r.decision.enqueue], refused)
        out: list[tuple[str | None, Answer | EdgerouteError]] = []
        answers = iter(routed)
        for i, (req, p) in enumerate(zip(requests, prepared, strict=True)):
            if isinstance(p, EdgerouteError):
                out.append((req.request_id if isinstance(req, InferRequest) else None, p))
                continue
            r = next(answers)
            if r.decision.reject:
                out.append((p.rid, refused.get(i) or rejection(r.decision)))
            else:
                out.append((p.rid, self._answer(active, r, t0)))
        return out

    def _refuse_taken_ids(
        self, prepared: list[PreparedItem | EdgerouteError]
    ) -> list[PreparedItem | EdgerouteError]:
        """`prepared`, changed in place: each item whose request_id is queued for another
        request (other task or inputs) becomes `RequestIdConflict`, online or not: one id,
        one request. Reads a queued item only when its id is in the queue's index."""
        for i, p in enumerate(prepared):
            if isinstance(p, PreparedItem) and p.rid in self.queue:
                queued = self.queue.get(p.rid)
                if queued is not None and not queued.same_inputs(p.task_name, p.sendable_inputs):
                    prepared[i] = id_conflict(p.rid, "a different request")
        return prepared

    def route(self, active: ActivePolicy, items: Sequence[PreparedItem], t0: float) -> list[Routed]:
        """Infer and decide `items` (each task's model once on its items): the answering
        version, local result, scores and `decide`'s decision of each, in order, with the
        inference and decision latencies observed. Carries nothing out and never awaits.
        `t0` is when the request started (for the time left before its deadline). Raises
        BundleError if a model fails. A batch of one (a single request) takes the same
        steps with the per-row scorers, its record scores completed when answered."""
        if len(items) == 1:
            return [self._route_one(active, items[0], t0)]
        groups: dict[str, list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault(it.task_name, []).append(i)
        out: list[Routed | None] = [None] * len(items)
        state = NodeState(self.escalation.monitor.state)
        for name, idx in groups.items():
            first = items[idx[0]]
            x = first.x[None, :] if len(idx) == 1 else np.stack([items[i].x for i in idx])
            t_inf = self._monotonic()
            pred = first.model.predict(x)
            self.metrics.inference_seconds.observe(self._monotonic() - t_inf)
            locals_, scores = local_results_many(
                pred.probs, first.model.labels, first.task, active.learned.get(name)
            )
            t_dec = self._monotonic()
            elapsed_ms = (t_dec - t0) * 1000.0
            for i, local, row in zip(idx, locals_, scores, strict=True):
                it = items[i]
                decision = decide(local, state, it.task, it.deadline_ms - elapsed_ms)
                out[i] = Routed(it, pred.version, local, row, decision)
            self.metrics.decision_seconds.observe(self._monotonic() - t_dec)
        return [r for r in out if r is not None]

    def _route_one(self, active: ActivePolicy, it: PreparedItem, t0: float) -> Routed:
        """`route` for one item: the per-row path, nothing left to group or stack."""
        t_inf = self._monotonic()
        pred = it.model.predict(it.x[None, :])
        self.metrics.inference_seconds.observe(self._monotonic() - t_inf)
        row: list[float] = pred.probs[0].tolist()
        local = local_result(row, it.model.labels, it.task, active.learned.get(it.task_name))
        t_dec = self._monotonic()
        state = NodeState(self.escalation.monitor.state)
        decision = decide(local, state, it.task, it.deadline_ms - (t_dec - t0) * 1000.0)
        self.metrics.decision_seconds.observe(self._monotonic() - t_dec)
        return Routed(it, pred.version, local, None, decision, row)

    async def _escalate(self, active: ActivePolicy, routed: list[Routed], t0: float) -> None:
        """Escalate `routed` in one call through the escalation step; each item's decision
        becomes `after(decision, outcome)`, its cloud answer kept when answered."""
        if not routed:
            return
        cost = active.policy.cost
        calls = [
            Call(
                RerankItem(
                    task=r.item.task.cloud_task or r.item.task_name,
                    request_id=r.item.rid,
                    inputs=r.item.sendable_inputs,
                    candidates=[c.label for c in r.local.candidates],
                ),
                r.item.task_name,
                limits_for(cost, r.item.task, r.item.task_name),
                cost.price_per_call,
            )
            for r in routed
        ]
        elapsed_ms = (self._monotonic() - t0) * 1000.0
        left_ms = min(r.item.deadline_ms for r in routed) - elapsed_ms
        settled = await self.escalation.run(
            calls, deadline_s=left_ms / 1000.0, request_id=calls[0].item.request_id
        )
        for r, s in zip(routed, settled, strict=True):
            r.decision = after(r.decision, s.outcome, r.item.task, cost, budget=s.budget)
            r.cloud = s.result

    async def _enqueue(
        self,
        active: ActivePolicy,
        routed: list[tuple[int, Routed]],
        refused: dict[int, EdgerouteError],
    ) -> None:
        """Queue every item of `routed` (position, item) durably in one worker-thread call
        (the queue group-commits them). An item the queue refuses as full gets
        `after(decision, queue_full)`: rejected (its error in `refused`) or answered
        locally; any other refusal (too large, a store fault) is its error in `refused`.
        Ids dropped by `drop_oldest` are recorded as expired."""
        if not routed:
            return
        now = self._clock()
        items = [
            QueuedItem(
                request_id=r.item.rid,
                task=r.item.task_name,
                cloud_task=r.item.task.cloud_task or r.item.task_name,
                inputs=r.item.sendable_inputs,
                candidates=[c.label for c in r.local.candidates],
                edge_label=r.local.label,
                edge_score=r.local.candidates[0].score,
                edge_candidates=[(c.label, c.score) for c in r.local.candidates],
                model_version=r.version,
                enqueued_at=now,
                reason=r.decision.reason,
            )
            for _, r in routed
        ]
        outcomes = await asyncio.to_thread(self.queue.put_many, items)
        dropped: list[str] = []
        cost = active.policy.cost
        for (i, r), outcome in zip(routed, outcomes, strict=True):
            if isinstance(outcome, list):
                dropped += outcome
            elif not isinstance(outcome, QueueFull):
                r.decision = Decision(
                    r.decision.route, r.decision.reason, r.decision.confidence,
                    r.decision.threshold, reject=True, answer_now=False,
                )  # fmt: skip
                refused[i] = outcome
            else:
                r.decision = after(r.decision, "queue_full", r.item.task, cost)
                if r.decision.reject:
                    refused[i] = outcome
                else:
                    log.warning(
                        "verify_not_queued", request_id=r.item.rid, task=r.item.task_name,
                        reason=QUEUE_FULL,
                    )  # fmt: skip
        if dropped:
            await asyncio.to_thread(self._expire_dropped, dropped)

    def _expire_dropped(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            self.results.put_expired(rid, QUEUE_FULL)
        self.metrics.dropped.inc(len(request_ids))

    def _answer(self, active: ActivePolicy, r: Routed, t0: float) -> Answer:
        """The answer of one carried-out item, with its metrics, decision record, the
        observers' call and (sampled) log line."""
        latency_ms = (self._monotonic() - t0) * 1000.0
        d, it = r.decision, r.item
        body, version, label = answer_body(
            it, d, r.local, r.version, r.cloud, active.revision, latency_ms
        )
        self.metrics.request_done(it.task_name, d.route, d.reason, latency_ms / 1e3)
        record = decision_record(
            self._clock(), it, active.revision, version, d, r.local, r.record_scores(), label,
            r.cloud,
            latency_ms,
        )  # fmt: skip
        self.decisions.write(orjson.dumps(record))
        for observer in self._observers:
            try:
                observer.observe(r, latency_ms)
            except Exception as exc:  # an observer's fault never fails the request
                log.warning(
                    "observer_failed", request_id=it.rid, task=it.task_name,
                    reason=type(exc).__name__,
                )  # fmt: skip
        if self.sample():
            log.info(
                "request", request_id=it.rid, task=it.task_name, route=d.route, reason=d.reason,
                latency_ms=body["latency_ms"], model_version=version,
                policy_revision=active.revision,
            )  # fmt: skip
        return Answer(200 if body["status"] == "answered" else 202, body)

    # ---- limits and results -------------------------------------------------------------

    def batch_limit(self, task_names: Iterable[str]) -> int:
        """The most items a batch naming `task_names` may hold: the smallest
        `max_batch_items` among those tasks (unknown names are ignored; the largest limit
        of any task if none is known). Pure read of the active policy."""
        tasks = self.active.policy.tasks
        limits = [tasks[n].max_batch_items for n in set(task_names) if n in tasks]
        if limits:
            return min(limits)
        return max((t.max_batch_items for t in tasks.values()), default=1)

    def result(self, request_id: str) -> dict[str, Any]:
        """The state of a queued request (`quarantined` if its queue row or result could
        not be read); raises NotFound for an id this node never queued (requests answered
        finally at once are not stored)."""
        rec = self.results.get(request_id)
        if rec is not None:
            return flatten_result(rec)
        item = self.queue.get(request_id)
        if item is None and (bad := self.queue.shelf.find(request_id)) is not None:
            return {"request_id": request_id, "status": "quarantined", "reason": bad["reason"]}
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
