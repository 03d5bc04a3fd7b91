"""The Serve ingress deployment behind `build_app`: auth, the four HTTP paths, dedup.

`CloudReranker` routes its HTTP calls itself (`cloud_service.http_routes`), parses them
(`cloud_service.http_parsing`), answers re-rank calls through the replica's dedup handling
(`rerank_flow.ReplicaDedup` over `shared_store.SharedStore`) and its model runs
(`replica_compute.ReplicaCompute`: the models in this replica by default, or one `TaskModel`
deployment per task reached through DeploymentHandles with `per_task_deployments`).
Importing this module imports ray (it declares the deployment); import it only where Ray is
wanted (`cloud_service.app.build_app` does so lazily). The class lives at module level so
replicas import it by reference instead of receiving a by-value pickle of a closure.
"""

# No `from __future__ import annotations` here: Serve inspects `__call__`'s signature.

import asyncio
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import structlog
from ray import serve
from ray.exceptions import RayError
from starlette.requests import Request
from starlette.responses import Response

from cloud_service.auth import token_sources
from cloud_service.http_parsing import (
    check_content_length,
    error_body,
    node_id_of,
    parse_request_ids,
    parse_rerank_body,
    request_id_of,
)
from cloud_service.http_routes import dispatch, json_response
from cloud_service.metrics import ReplicaMetrics
from cloud_service.replica_compute import ReplicaCompute
from cloud_service.rerank_flow import Answer, ReplicaDedup
from cloud_service.result_store import get_or_create_result_store
from cloud_service.settings import CloudServiceSettings
from cloud_service.shared_store import SharedStore
from router.errors import EdgerouteError, RetryableRejection, Unauthorized
from router.log_setup import configure_logging, sampler
from router.wire import (
    FIRST_SEND_HEADER,
    NODE_HEADER,
    REQUEST_ID_HEADER,
    RerankFailure,
    RerankItem,
    RerankResponse,
    RerankResult,
)

_log = structlog.get_logger("cloud_service.deployment")


def _tasks_of(items: Sequence[RerankItem]) -> str:
    return ",".join(sorted({it.task for it in items}))


@serve.deployment(name="CloudReranker")
class CloudReranker:
    """One ingress replica: auth, parsing, dedup, and the models or their handles.

    HTTP calls arrive at `__call__` (a plain Serve HTTP handler taking the Starlette
    request) and are routed by path and method by `http_routes.dispatch` to `rerank`,
    `healthz`, `stats` and `computed`."""

    def __init__(self, cfg: CloudServiceSettings, handles: Mapping[str, Any] | None = None) -> None:
        configure_logging(cfg.log_level)  # this replica's process: JSON lines on its stderr
        self._cfg = cfg
        self._sample = sampler(cfg.log_sample_rate, random.random)
        self._active = 0
        """HTTP calls of /v1/rerank in progress in this replica."""
        self._metrics = ReplicaMetrics()
        self._compute = ReplicaCompute(cfg, self._metrics, handles, busy=self._busy)
        self._store = get_or_create_result_store(
            cfg.result_store_name,
            cfg.ray_namespace,
            ttl_s=cfg.dedup_ttl_s,
            max_entries=cfg.dedup_max_entries,
            claim_timeout_s=cfg.dedup_claim_timeout_s,
        )
        self._shared = SharedStore(self._store, cfg, busy=self._busy)
        self._dedup = ReplicaDedup(self._shared, trust_first_send=cfg.dedup_trust_first_send)
        self._auth = token_sources(cfg.tokens_file, cfg.tokens_env)

    def _busy(self) -> bool:
        """Whether other /v1/rerank calls are in progress in this replica."""
        return self._active > 1

    def _authorize(self, request: Request, node_id: str) -> None:
        if self._auth is not None:
            try:
                self._auth.check(node_id, request.headers.get("authorization"))
            except Unauthorized:
                self._metrics.auth_failure()
                raise

    def _record_items(self, answers: Sequence[Answer]) -> None:
        counts: dict[tuple[str, str], int] = {}
        for a in answers:
            if isinstance(a, RerankFailure):
                outcome = "failed"
            else:
                outcome = "cached" if a.cached else "computed"
            counts[(a.task, outcome)] = counts.get((a.task, outcome), 0) + 1
        for (task, outcome), n in counts.items():
            self._metrics.items(task, outcome, n)

    # --- routes --------------------------------------------------------------------------

    async def __call__(self, request: Request) -> Response:
        """Route one HTTP call to its handler (`http_routes.ROUTES`); 404, 405 or 307
        otherwise."""
        return await dispatch(self, request)

    async def rerank(self, request: Request) -> Response:
        """Answer one item or a batch, deduplicated per node (see `cloud_service.app`);
        always a JSON response (errors as `{"error": ...}` with their status)."""
        started = time.perf_counter()
        self._active += 1
        try:
            return await self._rerank(request, started)
        finally:
            self._active -= 1

    async def _rerank(self, request: Request, started: float) -> Response:
        request_id = request_id_of(request.headers.get(REQUEST_ID_HEADER))
        try:
            node_id = node_id_of(request.headers.get(NODE_HEADER))
            self._authorize(request, node_id)
            check_content_length(request.headers.get("content-length"), self._cfg.max_body_bytes)
            items = parse_rerank_body(await request.body(), self._cfg.max_body_bytes)
            answers = await self._dedup.answer(
                items,
                node_id,
                compute=self._compute.compute_for(items),
                first_send_mark=request.headers.get(FIRST_SEND_HEADER),
            )
        except EdgerouteError as err:
            _log.info(
                "rerank_rejected",
                request_id=request_id,
                route="cloud",
                reason=err.code,
                status=err.status,
            )
            retry = err.retry_after_s if isinstance(err, RetryableRejection) else None
            self._metrics.request(err.status, time.perf_counter() - started)
            return json_response(error_body(err), err.status, retry)
        except Exception as exc:  # a bug: still answer JSON, never a bare 500 page
            _log.error(
                "rerank_failed", request_id=request_id, route="cloud", reason=type(exc).__name__
            )
            internal = EdgerouteError("internal error while re-ranking")
            self._metrics.request(internal.status, time.perf_counter() - started)
            return json_response(error_body(internal), internal.status)
        latency_ms = (time.perf_counter() - started) * 1000
        body = RerankResponse(results=answers).model_dump_json().encode()
        # Metrics and the log line are recorded right after the answer is handed to Serve
        # (next turn of the event loop), not before: at one connection that keeps them off
        # the request's latency.
        asyncio.get_running_loop().call_soon(self._answered, items, answers, request_id, latency_ms)
        return json_response(body)

    def _answered(
        self,
        items: list[RerankItem],
        answers: list[Answer],
        request_id: str | None,
        latency_ms: float,
    ) -> None:
        """Record an answered /v1/rerank call: metrics, and the `rerank_answered` line when
        the log sampler picks the call."""
        self._metrics.request(200, latency_ms / 1000)
        self._record_items(answers)
        if not self._sample():
            return
        cached = sum(1 for a in answers if isinstance(a, RerankResult) and a.cached)
        failed = sum(1 for a in answers if isinstance(a, RerankFailure))
        _log.info(
            "rerank_answered",
            request_id=request_id,
            route="cloud",
            task=_tasks_of(items),
            items=len(items),
            cached=cached,
            failed=failed,
            latency_ms=round(latency_ms, 3),
        )

    async def healthz(self, request: Request) -> Response:
        """200 with the served tasks and their model versions (per-task mode: task names)."""
        tasks = await self._compute.versions()
        return json_response(orjson.dumps({"status": "ok", "tasks": tasks}))

    async def stats(self, request: Request) -> Response:
        """Store counters (shared; this replica's queued writes are sent first, other
        replicas' arrive within `dedup_flush_delay_s`), this replica's batch counters and
        metrics mirror."""
        try:
            self._authorize(request, node_id_of(request.headers.get(NODE_HEADER)))
        except EdgerouteError as err:
            return json_response(error_body(err), err.status)
        try:
            await self._shared.client.flush()  # this replica's queued writes count too
            store_stats: dict[str, Any] = await self._store.stats.remote()
        except RayError as exc:
            _log.warning("result_store_unavailable", reason=type(exc).__name__)
            store_stats = {}
        payload = {
            **store_stats,
            "replica": {
                "batches": self._compute.batches,
                "batched_items": self._compute.batched_items,
                "max_batch_size_seen": self._compute.max_batch_seen,
                "first_send_items": self._dedup.first_send_items,
                "store_calls": self._shared.client.calls,
                "store_queued_writes": self._shared.client.queued_writes,
            },
            "metrics": self._metrics.snapshot(),
        }
        return json_response(orjson.dumps(payload))

    async def computed(self, request: Request) -> Response:
        """Read-only: how many times each of `{"request_ids": [...]}` was computed for the
        caller's node (`{"computed": {id: n}}`; 0 = never or expired). For exactly-once checks.
        This replica's queued writes are sent first (see `stats`)."""
        try:
            node_id = node_id_of(request.headers.get(NODE_HEADER))
            self._authorize(request, node_id)
            ids = parse_request_ids(await request.body())
        except EdgerouteError as err:
            return json_response(error_body(err), err.status)
        try:
            await self._shared.client.flush()  # this replica's queued writes count too
            counts: list[int] = await self._store.computed_counts.remote(
                [(node_id, i) for i in ids]
            )
        except RayError as exc:
            _log.warning("result_store_unavailable", reason=type(exc).__name__)
            internal = EdgerouteError("result store unavailable")
            return json_response(error_body(internal), internal.status)
        return json_response(orjson.dumps({"computed": dict(zip(ids, counts, strict=True))}))

    def check_health(self) -> None:
        """Serve's health check: raises BundleError unless every local ONNX session runs."""
        self._compute.check_health()
