"""The edge node's request handling: infer -> score -> decide -> carry the decision out.

`EdgeService` owns no I/O of its own: stores, the cloud client, the connectivity monitor,
the budget, the decision log and the clocks are injected (see `edge_node.factory`).
All methods run on one asyncio event loop; disk writes that must precede a response
(the durable queue) run in a worker thread so the loop keeps serving.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import structlog

from edge_node.cloud.client import CloudClient
from edge_node.cloud.connectivity import ConnectivityMonitor
from edge_node.lifecycle.active_policy import ActivePolicy
from edge_node.observe.decision_log import DecisionLog
from edge_node.observe.metrics import EdgeMetrics, NodeLevels
from edge_node.storage.budget_store import BudgetStore, Reservation
from edge_node.storage.queue_store import DurableQueue, QueuedItem
from edge_node.storage.result_store import ResultStore
from router.budget import BudgetLedger, limits_for
from router.decision import (
    Decision,
    LocalResult,
    NodeState,
    decide,
    on_cloud_failure,
    on_inputs_required,
)
from router.edge_api import InferRequest
from router.errors import (
    BudgetRejected,
    CloudError,
    CloudRejected,
    CloudTimeout,
    EdgerouteError,
    InputError,
    NotFound,
    QueueFull,
    RetryableRejection,
    UnknownTask,
)
from router.inputs import coerce_inputs, coerce_many
from router.local_result import complete_scores, local_result, local_results_many
from router.policy import TaskPolicy
from router.wire import INPUTS_REQUIRED, RerankFailure, RerankItem, RerankResult
from runtime.onnx_model import EdgeModel

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
        new_id: Callable[[], str] | None = None,
        sample: Callable[[], bool] = lambda: False,
    ) -> None:
        """Wire the node's parts. `sample()` says whether to write this request's log line
        (per-request lines are sampled; see `sampler`)."""
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
        self._new_id = new_id or request_ids()
        self._sample = sample
        self.cloud_calls = 0
        metrics.watch(self.levels)

    # ---- the request path -------------------------------------------------------------

    async def infer(self, req: InferRequest) -> Answer:
        """Answer one request. Raises EdgerouteError subclasses for client faults (4xx);
        every accepted request ends answered, queued durably, or explicitly rejected."""
        t0 = self._monotonic()
        active = self.active  # read once: this request sees one whole policy
        item = self._prepare(active, req)
        now = self._clock()
        probs, local, decision = self.route(active, item, now, t0)
        cloud: RerankResult | None = None
        if decision.escalate:
            decision, cloud = (await self._escalate(active, [(item, local, decision)], t0, now))[0]
        if decision.reject:
            raise _budget_rejected()
        if decision.enqueue:
            decision = await self._enqueue(item, local, decision, now)
        scores = complete_scores(probs, local.scores)
        return self._answer(active, item, decision, local, scores, cloud, t0)

    @property
    def sample(self) -> Callable[[], bool]:
        """Whether to write one per-request log line (the node's sampler; thread-safe)."""
        return self._sample

    def route(
        self, active: ActivePolicy, item: PreparedItem, now: float, t0: float
    ) -> tuple[list[float], LocalResult, Decision]:
        """Infer and route one prepared item: the edge model's probabilities, the local
        result (top-k and the deciding score) and `decide`'s decision, with the inference
        and decision latencies observed. `t0` is when the request started (for the time
        left before its deadline). Carries nothing out and never awaits; it looks up the
        budget store's known ledger (in memory once read) when `decide` reaches the budget
        rule. Raises BundleError if the model fails."""
        t_inf = self._monotonic()
        probs = item.model.predict_row(item.x)
        self.metrics.inference_seconds.observe(self._monotonic() - t_inf)
        local = local_result(
            probs, item.model.labels, item.task, active.learned.get(item.task_name)
        )
        decision = self._decide(
            active,
            local,
            item.task,
            now,
            item.deadline_ms - self._elapsed_ms(t0),
            task_name=item.task_name,
        )
        return probs, local, decision

    def prepare(self, req: InferRequest) -> tuple[ActivePolicy, PreparedItem]:
        """The active policy and `req` checked against it (task, inputs), ready for
        `route`. Raises UnknownTask or InputError."""
        active = self.active
        return active, self._prepare(active, req)

    async def infer_batch(self, items: Sequence[InferRequest | EdgerouteError]) -> Answer:
        """Answer a batch: `{"results": [...]}` in item order, always status 200.

        Each entry is the body the item would get on its own (`status` "answered" or
        "accepted") or, for an item that would get a 4xx on its own (invalid, unknown task,
        queue full, budget rejected, duplicate request_id), an `ItemError`-shaped object.
        An entry given as an EdgerouteError (the HTTP layer's per-item validation error)
        is reported as that item's error. The edge model runs once per task on all of the
        task's valid items; every item is decided on its own; the items that escalate go
        to the cloud in one re-rank call. Raises nothing for per-item faults.
        """
        t0 = self._monotonic()
        active = self.active
        out: list[dict[str, Any] | None] = [None] * len(items)
        prepared = self._prepare_many(active, items)
        groups: dict[str, list[tuple[int, PreparedItem]]] = {}
        seen: set[str] = set()
        for i, (req, item) in enumerate(zip(items, prepared, strict=True)):
            if isinstance(req, EdgerouteError):
                out[i] = item_error(req, None)
            elif req.request_id is not None and req.request_id in seen:
                out[i] = item_error(
                    InputError(
                        f"request_id {req.request_id!r} appears twice in the batch",
                        field="request_id",
                        code="duplicate_request_id",
                    ),
                    req.request_id,
                )
            elif isinstance(item, EdgerouteError):
                out[i] = item_error(item, req.request_id)
            else:
                seen.add(item.rid)
                groups.setdefault(item.task_name, []).append((i, item))

        routed: list[tuple[int, PreparedItem, LocalResult, dict[str, float]]] = []
        for name, group in groups.items():
            model, task, learned = group[0][1].model, group[0][1].task, active.learned.get(name)
            t_inf = self._monotonic()
            probs = model.predict(np.stack([it.x for _, it in group]))
            self.metrics.inference_seconds.observe(self._monotonic() - t_inf)
            locals_, scores = local_results_many(probs, model.labels, task, learned)
            for (i, it), local, row_scores in zip(group, locals_, scores, strict=True):
                routed.append((i, it, local, row_scores))

        now = self._clock()
        ledger = functools.cache(self.budget.known_ledger)  # one look per batch
        decided = [
            (
                i,
                it,
                local,
                row,
                self._decide(
                    active,
                    local,
                    it.task,
                    now,
                    it.deadline_ms - self._elapsed_ms(t0),
                    task_name=it.task_name,
                    ledger=ledger,
                ),
            )
            for i, it, local, row in routed
        ]
        escalating = [(it, local, d) for _, it, local, _, d in decided if d.escalate]
        escalated = iter(await self._escalate(active, escalating, t0, now) if escalating else [])
        final: list[
            tuple[int, PreparedItem, LocalResult, dict[str, float], Decision, RerankResult | None]
        ] = []
        for i, it, local, row, decision in decided:
            cloud: RerankResult | None = None
            if decision.escalate:
                decision, cloud = next(escalated)
            if decision.reject:
                out[i] = item_error(_budget_rejected(), it.rid)
                continue
            final.append((i, it, local, row, decision, cloud))
        to_queue = [(it, lo, d) for _, it, lo, _, d, _ in final if d.enqueue]
        outcomes = iter(await self._enqueue_many(to_queue, now) if to_queue else [])
        for i, it, local, row, decision, cloud in final:
            done = next(outcomes) if decision.enqueue else decision
            if isinstance(done, EdgerouteError):
                out[i] = item_error(done, it.rid)
            else:
                out[i] = self._answer(active, it, done, local, row, cloud, t0).body
        return Answer(200, {"results": out})

    def batch_limit(self, task_names: Iterable[str]) -> int:
        """The most items a batch naming `task_names` may hold: the smallest
        `max_batch_items` among those tasks (unknown names are ignored; the largest limit
        of any task if none is known). Pure read of the active policy."""
        tasks = self.active.policy.tasks
        limits = [tasks[n].max_batch_items for n in set(task_names) if n in tasks]
        if limits:
            return min(limits)
        return max((t.max_batch_items for t in tasks.values()), default=1)

    def _prepare(self, active: ActivePolicy, req: InferRequest) -> PreparedItem:
        task = active.policy.tasks.get(req.task)
        model = active.models.get(req.task)
        if task is None or model is None:
            raise _unknown_task(active, req.task)
        return self._prepared(req, task, model, coerce_inputs(req.inputs, model.input_spec))

    def _prepared(
        self, req: InferRequest, task: TaskPolicy, model: EdgeModel, x: np.ndarray
    ) -> PreparedItem:
        rid = req.request_id or self._new_id()
        return PreparedItem(
            rid,
            req.task,
            task,
            model,
            x,
            float(req.deadline_ms or task.deadline_ms),
            req.request_id is None,
        )

    def _prepare_many(
        self, active: ActivePolicy, items: Sequence[InferRequest | EdgerouteError]
    ) -> list[PreparedItem | EdgerouteError]:
        """`_prepare` of every request of `items` (an entry that is an error already stays
        that error), each item's inputs checked with its task's others in one pass
        (`coerce_many`); the outcome of each item is `_prepare`'s, returned, not raised."""
        out: list[PreparedItem | EdgerouteError] = [
            req if isinstance(req, EdgerouteError) else _NOT_YET for req in items
        ]
        by_task: dict[str, list[tuple[int, InferRequest]]] = {}
        for i, req in enumerate(items):
            if isinstance(req, InferRequest):
                by_task.setdefault(req.task, []).append((i, req))
        tasks, models = active.policy.tasks, active.models
        for name, reqs in by_task.items():
            task, model = tasks.get(name), models.get(name)
            if task is None or model is None:
                for i, _ in reqs:
                    out[i] = _unknown_task(active, name)
                continue
            rows, errors = coerce_many([r.inputs for _, r in reqs], model.input_spec)
            for (i, req), x, err in zip(reqs, rows, errors, strict=True):
                out[i] = err or self._prepared(req, task, model, x)
        return out

    def _decide(
        self,
        active: ActivePolicy,
        local: LocalResult,
        task: TaskPolicy,
        now: float,
        left_ms: float,
        *,
        offline: bool = False,
        task_name: str | None = None,
        ledger: Callable[[], BudgetLedger] | None = None,
    ) -> Decision:
        t = self._monotonic()
        conn = "offline" if offline else self.monitor.state
        # The ledger is looked up only if `decide` reaches its budget rule; the store's known
        # ledger is exact here (the node is the data dir's only writer) and costs no disk read.
        state = NodeState(conn, ledger or self.budget.known_ledger)
        cost = active.policy.cost
        decision = decide(local, state, task, cost, now, left_ms, task_name=task_name)
        self.metrics.decision_seconds.observe(self._monotonic() - t)
        return decision

    async def _escalate(
        self,
        active: ActivePolicy,
        batch: list[tuple[PreparedItem, LocalResult, Decision]],
        t0: float,
        now: float,
    ) -> list[tuple[Decision, RerankResult | None]]:
        """Carry out the escalation of `batch` (one cloud call for all of it); returns each
        item's final decision and cloud result (None when answered locally), in order."""
        out: list[tuple[Decision, RerankResult | None]] = []
        if not self.monitor.allow_request():
            return [
                (
                    self._decide(
                        active, lo, it.task, now, 0.0, offline=True, task_name=it.task_name
                    ),
                    None,
                )
                for it, lo, _ in batch
            ]
        calls: list[tuple[int, Reservation, RerankItem]] = []
        left_ms = float("inf")
        cost = active.policy.cost
        for it, local, decision in batch:
            reservation = self.budget.reserve(
                now, limits=limits_for(cost, it.task, it.task_name), price=cost.price_per_call
            )
            if reservation is None:  # lost the race for the last unit of budget
                left = it.deadline_ms - self._elapsed_ms(t0)
                redecided = self._decide(active, local, it.task, now, left, task_name=it.task_name)
                out.append((redecided, None))
                continue
            calls.append(
                (
                    len(out),
                    reservation,
                    RerankItem(
                        task=it.task.cloud_task or it.task_name,
                        request_id=it.rid,
                        inputs=_sendable_inputs(it),
                        candidates=[c.label for c in local.candidates],
                    ),
                )
            )
            out.append((decision, None))
            left_ms = min(left_ms, it.deadline_ms - self._elapsed_ms(t0))
        if not calls:
            return out
        t_call = self._monotonic()
        try:
            results = await self.client.rerank(
                [c[2] for c in calls],
                deadline_s=left_ms / 1000.0,
                request_id=calls[0][2].request_id,
                # ids this node generated for this request were never sent before; a client's
                # own id may be its retry of an earlier request, so the cloud must claim it
                first_send=all(batch[idx][0].own_id for idx, _, _ in calls),
            )
        except CloudError as exc:
            for idx, reservation, _ in calls:
                reservation.release()
                it, _, decision = batch[idx]
                out[idx] = (
                    on_cloud_failure(decision, it.task, timed_out=isinstance(exc, CloudTimeout)),
                    None,
                )
                self.metrics.cloud_errors.labels(it.task_name, exc.code).inc()
            if not isinstance(exc, CloudRejected):
                self.monitor.record_failure(exc.retry_after_s)
            log.warning(
                "cloud_failed", request_id=calls[0][2].request_id, reason=exc.code, items=len(calls)
            )
            return out
        finally:
            self.metrics.cloud_seconds.observe(self._monotonic() - t_call)
        self.monitor.record_success()
        self.cloud_calls += 1
        for (idx, reservation, _), result in zip(calls, results, strict=True):
            it, _, decision = batch[idx]
            if isinstance(result, RerankFailure):
                reservation.release()
                self.metrics.cloud_errors.labels(it.task_name, result.error.code).inc()
                out[idx] = (
                    on_inputs_required(decision)
                    if result.error.code == INPUTS_REQUIRED
                    else on_cloud_failure(decision, it.task, timed_out=False),
                    None,
                )
            else:
                reservation.commit()
                out[idx] = (decision, result)
        return out

    async def _enqueue(
        self, it: PreparedItem, local: LocalResult, decision: Decision, now: float
    ) -> Decision:
        """Queue one item durably (see `_enqueue_many`); raises its error (QueueFull...)."""
        done = (await self._enqueue_many([(it, local, decision)], now))[0]
        if isinstance(done, EdgerouteError):
            raise done
        return done

    async def _enqueue_many(
        self, batch: Sequence[tuple[PreparedItem, LocalResult, Decision]], now: float
    ) -> list[Decision | EdgerouteError]:
        """Queue every item of `batch` durably in one worker-thread call (the queue
        group-commits them together); one outcome per item, in order: the final decision,
        or the error that refuses the item (a `queued` route refused when full). A failed
        escalation being queued only for verification is answered locally instead when
        the queue refuses it. Ids dropped by `drop_oldest` are recorded as expired."""
        items = [
            QueuedItem(
                request_id=it.rid,
                task=it.task_name,
                cloud_task=it.task.cloud_task or it.task_name,
                inputs=_sendable_inputs(it),
                candidates=[c.label for c in local.candidates],
                edge_label=local.label,
                edge_score=local.candidates[0].score,
                edge_candidates=[(c.label, c.score) for c in local.candidates],
                model_version=it.model.version,
                enqueued_at=now,
                reason=decision.reason,
            )
            for it, local, decision in batch
        ]
        outcomes = await asyncio.to_thread(self.queue.put_many, items)
        out: list[Decision | EdgerouteError] = []
        dropped: list[str] = []
        for (it, _, decision), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, list):
                dropped += outcome
                out.append(decision)
            elif isinstance(outcome, QueueFull) and decision.route != "queued":
                # A failed escalation answers locally; verification is best-effort when full.
                log.warning(
                    "verify_not_queued", request_id=it.rid, task=it.task_name, reason="queue_full"
                )
                out.append(
                    Decision("edge", decision.reason, decision.confidence, decision.threshold)
                )
            else:
                out.append(outcome)
        if dropped:
            await asyncio.to_thread(self._expire_dropped, dropped)
        return out

    def _expire_dropped(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            self.results.put_expired(rid, "queue_full")
        self.metrics.dropped.inc(len(request_ids))

    def _answer(
        self,
        active: ActivePolicy,
        it: PreparedItem,
        decision: Decision,
        local: LocalResult,
        scores: dict[str, float],
        cloud: RerankResult | None,
        t0: float,
    ) -> Answer:
        """The body of one answered or accepted item, its metrics and decision record;
        `scores` is every registered score of the item (for the record)."""
        latency_ms = self._elapsed_ms(t0)
        version = it.model.version
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
        self.metrics.request_done(it.task_name, decision.route, decision.reason, latency_ms / 1e3)
        # Encoded here: under the GIL, work handed to the log's writer thread costs the
        # request path as much, plus the thread hand-offs (measured: 42 vs 60 us p50).
        self.decisions.write(
            orjson.dumps(
                _decision_record(
                    self._clock(),
                    it,
                    active.revision,
                    version,
                    decision,
                    local,
                    scores,
                    label,
                    cloud,
                    latency_ms,
                )
            )
        )
        rounded_ms = round(latency_ms, 3)
        if self._sample():
            log.info(
                "request",
                request_id=it.rid,
                task=it.task_name,
                route=decision.route,
                reason=decision.reason,
                latency_ms=rounded_ms,
                model_version=version,
                policy_revision=active.revision,
            )
        answered = decision.answer_now or cloud is not None
        body: dict[str, Any] = {
            "request_id": it.rid,
            "task": it.task_name,
            "route": decision.route,
            "reason": decision.reason,
            "label": label,
            "score": score,
            "candidates": cands,
            "model_version": version,
            "latency_ms": rounded_ms,
            "final": decision.final,
            "status": "answered" if answered else "accepted",
            "policy_revision": active.revision,
        }
        if decision.budget is not None:
            body["budget"] = decision.budget
        return Answer(200 if answered else 202, body)

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

    def levels(self) -> NodeLevels:
        """The live levels `/metrics` exposes (built from `status()`; reads the budget store
        once). Safe to call from the scraping thread."""
        st = self.status()
        cloud, queue, cost = st["cloud"], st["queue"], self.active.policy.cost
        inf = float("inf")
        calls, spent = int(cloud["calls_today"]), float(cloud["cost_today"])
        return NodeLevels(
            queue_depth=int(queue["depth"]),
            queue_bytes=int(queue["bytes"]),
            queue_oldest_age_s=float(queue["oldest_age_s"]),
            breaker=str(st["connectivity"]["breaker"]),
            connectivity=str(st["connectivity"]["state"]),
            budget_calls=calls,
            budget_spent=spent,
            budget_calls_left=inf if cost.daily_calls is None else cost.daily_calls - calls,
            budget_money_left=inf if cost.daily_budget is None else cost.daily_budget - spent,
            currency=str(cloud["currency"]),
            policy_revision=str(st["policy"]["revision"]),
            model_versions=dict(st["models"]),
            results=dict(st["results"]),
        )


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


@dataclass(slots=True)
class PreparedItem:
    """One validated request: its id, task policy, edge model, inputs and deadline, and
    whether the node generated the id (`own_id`: then no earlier call can have sent it).
    Never mutated after `_prepare` (not frozen: frozen init costs a microsecond per request)."""

    rid: str
    task_name: str
    task: TaskPolicy
    model: EdgeModel
    x: np.ndarray
    deadline_ms: float
    own_id: bool


def _decision_record(
    ts: float,
    it: PreparedItem,
    revision: str,
    version: str,
    decision: Decision,
    local: LocalResult,
    scores: dict[str, float],
    final_label: str | None,
    cloud: RerankResult | None,
    latency_ms: float,
) -> dict[str, Any]:
    """The decision-log record of one answered request, in DecisionRecord's JSON shape
    (not validated here: tests check it validates as a DecisionRecord, and
    `read_decision_log` validates every line)."""
    return {
        "ts": ts,
        "request_id": it.rid,
        "task": it.task_name,
        "policy_revision": revision,
        "model_version": version,
        "scores": scores,
        "edge_candidates": [{"label": c.label, "score": c.score} for c in local.candidates],
        "route": decision.route,
        "reason": decision.reason,
        "final_label": final_label,
        "cloud_label": cloud.label if cloud is not None else None,
        "cloud_candidates": (
            [{"label": c.label, "score": c.score} for c in cloud.candidates]
            if cloud is not None
            else None
        ),
        "budget": decision.budget,
        "kind": "decision",
        "latency_ms": latency_ms,
        "true_label": None,
    }


def request_ids() -> Callable[[], str]:
    """A generator of request ids for requests that bring none: 32 hex digits, a random
    64-bit prefix per process then a counter, so ids are unique across restarts and
    nodes (with the odds of a 64-bit collision) and cost a fraction of a uuid4.
    Thread-safe (itertools.count is atomic under the GIL)."""
    prefix = os.urandom(8).hex()
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter):016x}"


def _sendable_inputs(it: PreparedItem) -> list[float] | None:
    """The inputs that may leave the device for `it` (None: `send: candidates_only`)."""
    return None if it.task.send == "candidates_only" else it.x.tolist()


_NOT_YET = EdgerouteError("internal error: item not prepared")  # replaced for every request


def _unknown_task(active: ActivePolicy, name: str) -> UnknownTask:
    return UnknownTask(
        f"unknown task {name!r}; this node serves: {', '.join(sorted(active.policy.tasks))}",
        field="task",
    )


def _budget_rejected() -> BudgetRejected:
    return BudgetRejected(
        "the cost budget for cloud calls is exhausted and the policy "
        "rejects requests that need the cloud",
        retry_after_s=60.0,
    )


def item_error(exc: EdgerouteError, request_id: str | None) -> dict[str, Any]:
    """The batch entry for an item refused with `exc` (see api_models.ItemError)."""
    out: dict[str, Any] = {
        "request_id": request_id,
        "status": "error",
        "http_status": exc.status,
        "error": exc.to_dict(),
    }
    if isinstance(exc, RetryableRejection):
        out["retry_after_s"] = exc.retry_after_s
    return out
