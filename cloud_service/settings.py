"""Settings of the cloud re-ranking service (one frozen model, built by the CLI, tests, or
the Serve config's application `args`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from router.log_setup import LogLevel


class CloudServiceSettings(BaseModel):
    """Everything the Ray Serve app needs; immutable and validated (unknown keys rejected).

    `max_ongoing_requests` defaults far above Ray Serve's default of 5, which caps a
    replica's concurrency so low that it throttles throughput (figures in
    docs/performance.md). Auth is on when `tokens_file` or `tokens_env`
    is set: every `/v1/*` request must then carry `Authorization: Bearer <token>` for its
    `X-Edgeroute-Node`. `tokens_env` names an environment variable (read in each replica)
    holding `node_id token` pairs separated by newlines or commas.

    `per_task_deployments` puts each task's model in its own deployment (`model-<task>`)
    behind the ingress, called through DeploymentHandles; off by default because on 2 cores
    the extra hop costs throughput (see docs/cloud.md). `batching` turns `@serve.batch` for
    single-item calls off (used by the benchmark). `num_replicas` None leaves the count to
    Serve (1, or the config's `autoscaling_config`). When more than `max_queued_requests` wait
    at a caller, Serve answers `overload_status` with `Retry-After: retry_after_s`.

    `batch_wait_timeout_s` 0 batches opportunistically: the claimed items ready together
    (their claims answered by one store call) run as one batch, and a lone request never
    waits. `dedup_claim_timeout_s` is how long a claimed key may stay uncomputed before
    another caller takes it over (longer than any model run; see `result_store`);
    `dedup_flush_delay_s` is the longest a computed result waits in the replica for a claim
    call to ride with before it is sent on its own: a replica sends at most 1/delay calls
    per second of writes alone (10 at the default 0.1 s; many replicas share one store
    actor), and other replicas see a result at most that late (a first send's retry landing
    elsewhere within it is computed again; a concurrent duplicate waits up to it). The
    store actor keeps the claim timeout it was created with. `dedup_claim_linger_s` is the
    longest a claim waits for the claims of other requests in progress in the same replica,
    to share one store call (never when the request is the replica's only one).

    `dedup_trust_first_send` lets a call marked `X-Edgeroute-First-Send: 1` (the edge's
    first try of ids it generated itself) skip the claim: its items are computed at once
    and their results stored for later retries. Off: every item is claimed (one awaited
    store round trip per call), whatever the sender says.

    Each replica logs structlog JSON lines to its stderr (Ray's `worker-*.err` files) at
    `log_level`; the per-request `rerank_answered` line (request_id from `X-Request-ID`,
    task, route, latency_ms, item counts; never inputs) is written for a share
    `log_sample_rate` of answered calls (1: every call, 0: none). Rejections and failures
    are always logged. Serve's own access log lines carry the same request id.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    bundles_dir: Path
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_batch_size: int = Field(default=32, ge=1, le=4096)
    batch_wait_timeout_s: float = Field(default=0.0, ge=0.0, le=10.0)
    batching: bool = True
    per_task_deployments: bool = False
    max_ongoing_requests: int = Field(default=256, ge=1)
    max_queued_requests: int = Field(default=1024, ge=-1)
    overload_status: Literal[503, 429] = 503
    retry_after_s: float = Field(default=1.0, ge=0.0, le=3600.0)
    num_replicas: int | None = Field(default=None, ge=1)
    health_check_period_s: float = Field(default=10.0, gt=0.0)
    dedup_ttl_s: float = Field(default=3600.0, gt=0.0)
    dedup_max_entries: int = Field(default=1_000_000, ge=1)
    dedup_claim_timeout_s: float = Field(default=10.0, gt=0.0, le=3600.0)
    dedup_flush_delay_s: float = Field(default=0.1, ge=0.0, le=10.0)
    dedup_claim_linger_s: float = Field(default=0.002, ge=0.0, le=1.0)
    dedup_trust_first_send: bool = True
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    tokens_file: Path | None = None
    tokens_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    result_store_name: str = Field(default="edgeroute-result-store", min_length=1)
    ray_namespace: str = Field(default="edgeroute", min_length=1)
    log_level: LogLevel = "info"
    log_sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    slow_model_s: float = Field(default=0.0, ge=0.0, le=60.0)
    """Test hook: extra seconds each model call sleeps (to provoke back-pressure). Keep 0."""
