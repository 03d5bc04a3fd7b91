"""Settings of the cloud re-ranking service (one frozen model, built by the CLI or tests)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class CloudServiceSettings(BaseModel):
    """Everything the Ray Serve app needs; immutable and validated (unknown keys rejected).

    `max_ongoing_requests` defaults far above Ray Serve's default of 5, which throttles a
    2-core machine to about 10 requests/s. `tokens_file`, when set, turns auth on: every
    `/v1/*` request must carry `Authorization: Bearer <token>` for its `X-Edgeroute-Node`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    bundles_dir: Path
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_batch_size: int = Field(default=32, ge=1, le=4096)
    batch_wait_timeout_s: float = Field(default=0.002, ge=0.0, le=10.0)
    max_ongoing_requests: int = Field(default=256, ge=1)
    max_queued_requests: int = Field(default=1024, ge=-1)
    num_replicas: int = Field(default=1, ge=1)
    dedup_ttl_s: float = Field(default=3600.0, gt=0.0)
    dedup_max_entries: int = Field(default=1_000_000, ge=1)
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    tokens_file: Path | None = None
    result_store_name: str = Field(default="edgeroute-result-store", min_length=1)
    ray_namespace: str = Field(default="edgeroute", min_length=1)
