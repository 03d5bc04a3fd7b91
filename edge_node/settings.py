"""Settings of one edge node process (from the CLI), apart from the policy file."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class EdgeSettings(BaseModel):
    """Where the node's policy and data live and how it listens."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    policy_path: Path
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    cloud_url: str | None = Field(default=None, description="Overrides the policy's cloud.url.")
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    log_level: str = "info"
    log_sample_rate: float = Field(
        default=0.01, ge=0.0, le=1.0, description="Share of requests that get a log line."
    )
    run_sync_worker: bool = True
