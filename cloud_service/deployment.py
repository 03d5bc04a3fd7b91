"""The Serve ingress deployment behind `build_app`: FastAPI routes, auth, dedup, parsing.

The models either live in this replica (default) or in one `TaskModel` deployment per task
reached through DeploymentHandles (`per_task_deployments`). Importing this module imports
ray (it declares the deployment); import it only where Ray is wanted
(`cloud_service.app.build_app` does so lazily). The class lives at module level so
replicas import it by reference instead of receiving a by-value pickle of a closure.
"""

# No `from __future__ import annotations` here: Serve inspects `__call__`'s signature.

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson
import structlog
from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import BackPressureError
from starlette.requests import Request
from starlette.responses import Response

from cloud_service.app import ID_RE, error_body, node_id_of, parse_rerank_body
from cloud_service.auth import token_sources
from cloud_service.metrics import ReplicaMetrics
from cloud_service.rerank_flow import (
    Answer,
    ReadyGroup,
    RerankModel,
    answer_with_dedup,
    failure,
    rerank_by_task,
)
from cloud_service.result_store import (
    CLAIMED,
    Outcome,
    StoredResult,
    StoreKey,
    get_or_create_result_store,
)
from cloud_service.settings import CloudServiceSettings
from cloud_service.store_client import CoalescingStore
from router.errors import (
    EdgerouteError,
    InputError,
    MalformedRequest,
    RequestTooLarge,
    RetryableRejection,
    Unauthorized,
)
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

INLINE_COMPUTE_S = 0.002
"""A model call expected to take less than this runs on the replica's event loop: handing
it to a thread costs more CPU than the call itself. Longer ones run in a worker thread so
the loop keeps serving. The expectation is a moving average of seconds per item. (At 0.5 ms
the batches of a loaded 2-core replica went to a thread, and most of their time is
GIL-bound result building, so the hop bought nothing: batched 0.8-0.9x unbatched at 16
connections, 1.0x with 2 ms.)"""

NOT_FOUND = orjson.dumps({"detail": "Not Found"})
METHOD_NOT_ALLOWED = orjson.dumps({"detail": "Method Not Allowed"})


class CloudOverloaded(RetryableRejection):
    """A task deployment refused the call (its `max_queued_requests` is reached)."""

    code = "overloaded"

    def __init__(self, message: str, *, status: int, retry_after_s: float) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.status = status


def json_response(
    payload: bytes, status: int = 200, retry_after_s: float | None = None
) -> Response:
    """A JSON response with the given bytes and status (and `Retry-After` when given)."""
    headers = None
    if retry_after_s is not None:
        headers = {"Retry-After": str(max(0, int(-(-retry_after_s // 1))))}
    return Response(
        content=payload, status_code=status, media_type="application/json", headers=headers
    )


def _tasks_of(items: Sequence[RerankItem]) -> str:
    return ",".join(sorted({it.task for it in items}))


class SharedStore:
    """This replica's view of the shared store actor (`rerank_flow.DedupStore`): claims go
    through a `CoalescingStore`, waits straight to the actor (so a wait never holds up the
    replica's other store traffic). A store outage (RayError) makes every asked key
    CLAIMED: the item is computed, not deduplicated, and a warning is logged."""

    def __init__(
        self, actor: Any, cfg: CloudServiceSettings, busy: Callable[[], bool] | None = None
    ) -> None:
        self._actor = actor
        self._max_wait_s = cfg.dedup_claim_timeout_s + 1.0
        self.client = CoalescingStore(
            self._settle,
            flush_delay_s=cfg.dedup_flush_delay_s,
            on_write_error=_write_failed,
            linger_s=cfg.dedup_claim_linger_s,
            busy=busy,
        )

    async def _settle(
        self, puts: list[tuple[StoreKey, StoredResult]], releases: list[StoreKey],
        claims: list[tuple[StoreKey, str]],
    ) -> list[Outcome]:  # fmt: skip
        if not hasattr(self._actor, "settle"):  # a store actor started by an older version
            found = await self._actor.exchange.remote(puts, claims)
            return [CLAIMED if f is None else f for f in found]
        outcomes: list[Outcome] = await self._actor.settle.remote(puts, releases, claims)
        return outcomes

    async def claim(self, claims: list[tuple[StoreKey, str]]) -> list[Outcome]:
        """See `CoalescingStore.claim`."""
        try:
            return await self.client.claim(claims)
        except RayError as exc:
            _log.warning("result_store_unavailable", reason=type(exc).__name__)
            return [CLAIMED] * len(claims)

    async def wait(self, claims: list[tuple[StoreKey, str]]) -> list[Outcome]:
        """See `ResultStoreActor.wait_claims` (e.g. after a store restart lost the claims,
        the call fails and every key is CLAIMED)."""
        if not hasattr(self._actor, "wait_claims"):
            return [CLAIMED] * len(claims)
        try:
            outcomes: list[Outcome] = await self._actor.wait_claims.remote(claims, self._max_wait_s)
        except RayError as exc:
            _log.warning("result_store_unavailable", reason=type(exc).__name__)
            return [CLAIMED] * len(claims)
        return outcomes

    def put_later(self, entries: list[tuple[StoreKey, StoredResult]]) -> None:
        """See `CoalescingStore.put_later`."""
        self.client.put_later(entries)

    def release_later(self, keys: list[StoreKey]) -> None:
        """See `CoalescingStore.release_later`."""
        self.client.release_later(keys)


def _write_failed(exc: BaseException) -> None:
    _log.warning("result_store_write_failed", reason=type(exc).__name__)


def route_path(scope: Mapping[str, Any]) -> str:
    """The request's path relative to the app's route prefix (`root_path`), as Starlette's
    router computes it."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path


@serve.deployment(name="CloudReranker")
class CloudReranker:
    """One ingress replica: auth, parsing, dedup, and the models or their handles.

    HTTP calls arrive at `__call__` (a plain Serve HTTP handler taking the Starlette
    request) and are routed by path and method there, not by a FastAPI ingress: FastAPI's
    router, middleware stack and response wrapping cost a replica about 0.1 ms of CPU per
    request on 2 cores, for four fixed routes. Unknown paths and wrong methods get the
    answers FastAPI gave (404 / 405 with `{"detail": ...}` and `Allow`, 307 to the path
    without its trailing slash)."""

    ROUTES: dict[str, tuple[str, str]] = {
        "/v1/rerank": ("POST", "rerank"),
        "/healthz": ("GET", "healthz"),
        "/v1/stats": ("GET", "stats"),
        "/v1/stats/computed": ("POST", "computed"),
    }
    """Path -> (method, name of the handler method taking the request)."""

    def __init__(self, cfg: CloudServiceSettings, handles: Mapping[str, Any] | None = None) -> None:
        configure_logging(cfg.log_level)  # this replica's process: JSON lines on its stderr
        self._cfg = cfg
        self._sample = sampler(cfg.log_sample_rate, random.random)
        self._handles: dict[str, Any] = dict(handles or {})
        self._models: dict[str, RerankModel] = {}
        if handles is None:
            from cloud_service.model import load_cloud_models

            self._models = dict(load_cloud_models(cfg.bundles_dir))
        self._store = get_or_create_result_store(
            cfg.result_store_name,
            cfg.ray_namespace,
            ttl_s=cfg.dedup_ttl_s,
            max_entries=cfg.dedup_max_entries,
            claim_timeout_s=cfg.dedup_claim_timeout_s,
        )
        self._active = 0
        """HTTP calls of /v1/rerank in progress in this replica."""
        self._ready = ReadyGroup()
        """Single-item calls at the compute step (see `_compute_single`)."""
        self._shared = SharedStore(self._store, cfg, busy=lambda: self._active > 1)
        self._auth = token_sources(cfg.tokens_file, cfg.tokens_env)
        self._metrics = ReplicaMetrics()
        self._batches = 0
        self._batched_items = 0
        self._first_sends = 0
        """Items received in calls marked as first sends (answered without a claim; repeats
        inside such a call and failed items included)."""
        self._max_batch_seen = 0
        self._item_cost_s = self._measure_item_cost()
        batched: Any = self.compute_one
        batched.set_max_batch_size(cfg.max_batch_size)
        batched.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    # --- computing ---------------------------------------------------------------------

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
        self._batches += 1
        self._batched_items += len(items)
        self._max_batch_seen = max(self._max_batch_seen, len(items))
        for task in {it.task for it in items}:
            self._metrics.batch(task, sum(1 for it in items if it.task == task))
        if self._item_cost_s * len(items) < INLINE_COMPUTE_S:
            return self._timed_rerank(items)
        return await asyncio.to_thread(self._timed_rerank, items)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def compute_one(self, items: list[RerankItem]) -> list[Answer]:
        """Compute the claimed items of concurrent single-item calls together: one model
        run per task for the batch. Only the model run is batched: the claims of those
        calls were merged by the store client already, and holding a batch open across
        store round trips would serialise them (Serve runs one batch at a time)."""
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
        arrive here together when one store call answered their claims; first sends (no
        claim) arrive as their bodies are read, together only when the proxy delivered
        them in the same turn of the event loop. Each marks itself ready and
        yields once to the event loop, so the others of its group mark themselves too; if
        it is then not alone, they go through `@serve.batch` and share one model run,
        otherwise it is computed at once. A lone call (no other call in progress) skips
        even that yield, so batching on is not slower than off at one connection. With a
        batch wait > 0, every call that has company in the replica joins the batch."""
        if len(items) != 1:
            return await self._run_local(items)
        if self._active <= 1 and self._cfg.batch_wait_timeout_s == 0:
            return await self._run_local(items)
        if self._cfg.batch_wait_timeout_s > 0:
            return [await self.compute_one(items[0])]

        async def together() -> list[Answer]:
            return [await self.compute_one(items[0])]

        return await self._ready.run(lambda: self._run_local(items), together)

    async def _answer(
        self, items: list[RerankItem], node_id: str, *, claim: bool = True
    ) -> list[Answer]:
        """Answers in item order, deduplicated through the shared store (`claim=False`: a
        first send, computed without a claim, see `answer_with_dedup`); the claimed item of
        a single-item call joins the `@serve.batch` when batching is on and the models are
        local, anything else is computed here."""
        single = len(items) == 1 and self._cfg.batching and not self._handles
        if not claim:
            self._first_sends += len(items)
        return await answer_with_dedup(
            items,
            node_id,
            store=self._shared,
            compute=self._compute_single if single else self._compute,
            claim=claim,
        )

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

    # --- the shared store ----------------------------------------------------------------

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
        """Route one HTTP call to its handler (see `ROUTES`); 404, 405 or 307 otherwise."""
        path = route_path(request.scope)
        route = self.ROUTES.get(path)
        if route is None:
            if path.endswith("/") and path.rstrip("/") in self.ROUTES:
                target = request.url.replace(path=request.url.path.rstrip("/"))
                return Response(status_code=307, headers={"location": str(target)})
            return json_response(NOT_FOUND, 404)
        method, name = route
        if request.method != method:
            response = json_response(METHOD_NOT_ALLOWED, 405)
            response.headers["allow"] = method
            return response
        handler: Callable[[Request], Awaitable[Response]] = getattr(self, name)
        return await handler(request)

    async def rerank(self, request: Request) -> Response:
        """Answer one item or a batch, deduplicated per node (see `cloud_service.app`)."""
        started = time.perf_counter()
        self._active += 1
        try:
            return await self._rerank(request, started)
        finally:
            self._active -= 1

    async def _rerank(self, request: Request, started: float) -> Response:
        header_rid = request.headers.get(REQUEST_ID_HEADER)
        request_id = header_rid if header_rid and ID_RE.match(header_rid) else None
        try:
            node_id = node_id_of(request.headers.get(NODE_HEADER))
            self._authorize(request, node_id)
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and (int(length) > self._cfg.max_body_bytes):
                raise RequestTooLarge(f"body exceeds {self._cfg.max_body_bytes} bytes")
            items = parse_rerank_body(await request.body(), self._cfg.max_body_bytes)
            first_send = (
                self._cfg.dedup_trust_first_send and request.headers.get(FIRST_SEND_HEADER) == "1"
            )
            answers = await self._answer(items, node_id, claim=not first_send)
        except EdgerouteError as err:
            _log.info(
                "rerank_rejected",
                request_id=request_id,
                route="cloud",
                reason=err.code,
                status=err.status,
            )
            retry = err.retry_after_s if isinstance(err, RetryableRejection) else None
            self._metrics.request(err.status, (time.perf_counter() - started) * 1000)
            return json_response(error_body(err), err.status, retry)
        except Exception as exc:  # a bug: still answer JSON, never a bare 500 page
            _log.error(
                "rerank_failed", request_id=request_id, route="cloud", reason=type(exc).__name__
            )
            internal = EdgerouteError("internal error while re-ranking")
            self._metrics.request(internal.status, (time.perf_counter() - started) * 1000)
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
        self._metrics.request(200, latency_ms)
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
        if self._handles:
            tasks = {}
            for task in sorted(self._handles):
                tasks[task] = await self._handles[task].version.remote()
        else:
            tasks = {task: m.version for task, m in sorted(self._models.items())}
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
                "batches": self._batches,
                "batched_items": self._batched_items,
                "max_batch_size_seen": self._max_batch_seen,
                "first_send_items": self._first_sends,
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
            data = orjson.loads(await request.body())
            ids = data.get("request_ids") if isinstance(data, dict) else None
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise InputError("request_ids must be a list of strings", field="request_ids")
        except orjson.JSONDecodeError:
            return json_response(error_body(MalformedRequest("body is not valid JSON")), 400)
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
        for model in self._models.values():
            check = getattr(model, "self_check", None)
            if check is not None:
                check()
