"""The Serve deployment behind `build_app`: one FastAPI-ingress replica class for all tasks.

Importing this module imports ray (it declares the deployment); import it only where Ray
is wanted (`cloud_service.app.build_app` does so lazily). Declaring the deployment does
not connect to Ray. The class lives at module level so replicas import it by reference
instead of receiving a by-value pickle of a closure.
"""

# No `from __future__ import annotations` here: Serve rewraps the endpoints and FastAPI
# would then fail to resolve string annotations such as "Request" (422 on every call).

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request, Response
from ray import serve
from ray.exceptions import RayError

from cloud_service.app import ID_RE, error_body, node_id_of, parse_rerank_body
from cloud_service.auth import TokenFile
from cloud_service.rerank_flow import Answer, RerankModel, answer_with_dedup, rerank_by_task
from cloud_service.result_store import StoredResult, StoreKey, get_or_create_result_store
from cloud_service.settings import CloudServiceSettings
from router.errors import EdgerouteError, RequestTooLarge
from router.wire import NODE_HEADER, REQUEST_ID_HEADER, RerankItem, RerankResponse

_log = structlog.get_logger("cloud_service.deployment")

api = FastAPI(title="edgeroute cloud re-ranker", docs_url=None, redoc_url=None, openapi_url=None)


def json_response(payload: bytes, status: int = 200) -> Response:
    """A JSON response with the given bytes and status."""
    return Response(content=payload, status_code=status, media_type="application/json")


def _tasks_of(items: Sequence[RerankItem]) -> str:
    return ",".join(sorted({it.task for it in items}))


@serve.deployment(name="CloudReranker")
@serve.ingress(api)
class CloudReranker:
    """One replica: the task models, the store handle, batch counters and auth."""

    def __init__(self, cfg: CloudServiceSettings) -> None:
        from cloud_service.model import load_cloud_models

        self._cfg = cfg
        self._models: dict[str, RerankModel] = dict(load_cloud_models(cfg.bundles_dir))
        self._store = get_or_create_result_store(
            cfg.result_store_name,
            cfg.ray_namespace,
            ttl_s=cfg.dedup_ttl_s,
            max_entries=cfg.dedup_max_entries,
        )
        self._auth = TokenFile(cfg.tokens_file) if cfg.tokens_file is not None else None
        self._batches = 0
        self._batched_items = 0
        self._max_batch_seen = 0
        batched: Any = self.rerank_one
        batched.set_max_batch_size(cfg.max_batch_size)
        batched.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def rerank_one(self, items: list[RerankItem]) -> list[Answer]:
        """Re-rank items of concurrent single-item calls in one model run per task."""
        self._batches += 1
        self._batched_items += len(items)
        self._max_batch_seen = max(self._max_batch_seen, len(items))
        return await asyncio.to_thread(rerank_by_task, self._models, items)

    async def _compute(self, items: list[RerankItem]) -> list[Answer]:
        if len(items) == 1:
            return [await self.rerank_one(items[0])]
        return await asyncio.to_thread(rerank_by_task, self._models, items)

    async def _lookup(self, lookups: list[tuple[StoreKey, str]]) -> list[StoredResult | None]:
        try:
            found: list[StoredResult | None] = await self._store.get_many.remote(lookups)
        except RayError as exc:
            _log.warning("result_store_unavailable", reason=type(exc).__name__)
            return [None] * len(lookups)
        return found

    async def _put(self, entries: list[tuple[StoreKey, StoredResult]]) -> None:
        try:
            await self._store.put_many.remote(entries)
        except RayError as exc:
            _log.warning("result_store_unavailable", reason=type(exc).__name__)

    def _authorize(self, request: Request, node_id: str) -> None:
        if self._auth is not None:
            self._auth.check(node_id, request.headers.get("authorization"))

    @api.post("/v1/rerank")
    async def rerank(self, request: Request) -> Response:
        """Answer one item or a batch, deduplicated per node (see the module doc)."""
        started = time.perf_counter()
        header_rid = request.headers.get(REQUEST_ID_HEADER)
        request_id = header_rid if header_rid and ID_RE.match(header_rid) else None
        try:
            node_id = node_id_of(request.headers.get(NODE_HEADER))
            self._authorize(request, node_id)
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and (int(length) > self._cfg.max_body_bytes):
                raise RequestTooLarge(f"body exceeds {self._cfg.max_body_bytes} bytes")
            items = parse_rerank_body(await request.body(), self._cfg.max_body_bytes)
            answers = await answer_with_dedup(
                items,
                node_id,
                lookup=self._lookup,
                store=self._put,
                compute=self._compute,
            )
        except EdgerouteError as err:
            _log.info(
                "rerank_rejected",
                request_id=request_id,
                route="cloud",
                reason=err.code,
                status=err.status,
            )
            return json_response(error_body(err), err.status)
        except Exception as exc:  # a bug: still answer JSON, never a bare 500 page
            _log.error(
                "rerank_failed", request_id=request_id, route="cloud", reason=type(exc).__name__
            )
            internal = EdgerouteError("internal error while re-ranking")
            return json_response(error_body(internal), internal.status)
        cached = sum(1 for a in answers if getattr(a, "cached", False))
        failed = sum(1 for a in answers if not hasattr(a, "cached"))
        _log.info(
            "rerank_answered",
            request_id=request_id,
            route="cloud",
            task=_tasks_of(items),
            items=len(items),
            cached=cached,
            failed=failed,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        return json_response(RerankResponse(results=answers).model_dump_json().encode())

    @api.get("/healthz")
    async def healthz(self) -> Response:
        """200 with the served tasks and their model versions."""
        tasks = {task: m.version for task, m in sorted(self._models.items())}
        return json_response(orjson.dumps({"status": "ok", "tasks": tasks}))

    @api.get("/v1/stats")
    async def stats(self, request: Request) -> Response:
        """Store counters (shared) and this replica's batch counters."""
        try:
            self._authorize(request, node_id_of(request.headers.get(NODE_HEADER)))
        except EdgerouteError as err:
            return json_response(error_body(err), err.status)
        try:
            store_stats: dict[str, Any] = await self._store.stats.remote()
        except RayError as exc:
            _log.warning("result_store_unavailable", reason=type(exc).__name__)
            store_stats = {}
        payload = {
            **store_stats,
            "replica": {
                "batches": self._batches,
                "batched_items": self._batched_items,
                "max_batch_size_seen": self._max_batch_seen,
            },
        }
        return json_response(orjson.dumps(payload))
