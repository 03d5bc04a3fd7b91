"""Typed policy models: the schema of `policies/*.yaml`.

All models are frozen and strict about keys (`extra="forbid"`): a misspelled or misplaced
key is an error, never silently ignored. Durations are integers in milliseconds (`*_ms`)
or seconds (`*_s`) as the field name says; money is a float in `cost.currency`.
Load files with `router.policy_loader.parse_policy`, which locates errors by line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from router.scores import LEARNED, SCORE_NAMES

Placement = Literal["edge_only", "hybrid", "cloud_first"]
OfflineAction = Literal["answer_and_queue", "queue_only", "answer_only"]
BudgetAction = Literal["answer_locally", "queue", "reject"]
OnFull = Literal["reject", "drop_oldest"]
BudgetPeriod = Literal["hour", "day"]
Durability = Literal["os_crash_safe", "per_write"]
SendPolicy = Literal["inputs", "candidates_only", "nothing"]


TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A task name: it names folders (the model store) and metrics, so ASCII letters, digits
and `._-`, 1-64 characters, starting with a letter or digit."""


def name_check(kind: str) -> Callable[[str], str]:
    """A validator accepting names of the `TASK_NAME` form, its error naming `kind`
    ("task", "rollout")."""

    def check(name: str) -> str:
        if TASK_NAME.fullmatch(name) is None:
            raise ValueError(
                f"{kind} name {name!r} may only contain ASCII letters, digits and '-_.' "
                "(1-64, starting with a letter or digit)"
            )
        return name

    return check


TaskName = Annotated[str, AfterValidator(name_check("task"))]


class StrictModel(BaseModel):
    """Base of every model users write: frozen, strict types, unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class NodeSettings(StrictModel):
    """Who this edge node is."""

    id: str = Field(
        default="edge-1",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Edge node id, sent to the cloud with every item (dedup key part).",
    )


class RetrySettings(StrictModel):
    """Retries of one cloud call (tenacity): exponential backoff with jitter."""

    max_attempts: int = Field(default=3, ge=1, le=10, description="Tries per call, first included.")
    backoff_initial_ms: int = Field(default=50, ge=0, le=60_000)
    backoff_max_ms: int = Field(default=1_000, ge=0, le=600_000)
    jitter: bool = Field(default=True, description="Randomise each backoff in [0, backoff].")

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> RetrySettings:
        if self.backoff_max_ms < self.backoff_initial_ms:
            raise ValueError("backoff_max_ms must be >= backoff_initial_ms")
        return self


class BreakerSettings(StrictModel):
    """Circuit breaker of the connectivity monitor, one per cloud endpoint."""

    failure_threshold: int = Field(
        default=3, ge=1, le=1000, description="Consecutive failures that open the breaker."
    )
    open_ms: int = Field(
        default=2_000,
        ge=10,
        le=3_600_000,
        description="How long the breaker stays open before a probe.",
    )
    open_max_ms: int = Field(
        default=30_000,
        ge=10,
        le=86_400_000,
        description="Cap of the open time, which doubles per reopening.",
    )
    probe_interval_ms: int = Field(
        default=1_000, ge=10, le=3_600_000, description="Health-probe period while offline."
    )
    failure_ratio: float | None = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="Also open when this share of the calls in the window failed (null: off).",
    )
    window_ms: int = Field(
        default=10_000, ge=100, le=3_600_000, description="Window of the failure ratio."
    )
    min_calls: int = Field(
        default=10, ge=1, le=100_000, description="Calls in the window before the ratio counts."
    )

    @model_validator(mode="after")
    def _cap_not_below_open(self) -> BreakerSettings:
        if self.open_max_ms < self.open_ms:
            raise ValueError("open_max_ms must be >= open_ms")
        return self


def _absolute_path(path: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"must be an absolute path (starting with '/'), got {path!r}")
    return path


AbsolutePath = Annotated[str, AfterValidator(_absolute_path)]


class TlsSettings(StrictModel):
    """How the node checks the cloud's certificate and proves its own (mTLS). Files are
    PEM, read once when the node starts (a change takes a restart)."""

    ca_bundle: AbsolutePath | None = Field(
        default=None,
        description="CA certificates to trust for the cloud instead of the system's.",
    )
    client_cert: AbsolutePath | None = Field(
        default=None, description="The node's certificate chain, sent when the cloud asks (mTLS)."
    )
    client_key: AbsolutePath | None = Field(
        default=None, description="The private key of client_cert (unencrypted PEM)."
    )

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsSettings:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key must be set together")
        return self


class CloudSettings(StrictModel):
    """Where the cloud re-ranker is and how to talk to it."""

    url: str = Field(
        default="http://127.0.0.1:8000",
        pattern=r"^https?://[^\s]+$",
        description="Base URL of the cloud service (overridable with --cloud-url).",
    )
    token_env: str | None = Field(
        default=None,
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="Environment variable holding the bearer token for the cloud.",
    )
    connect_timeout_ms: int = Field(default=200, ge=1, le=60_000)
    request_timeout_ms: int = Field(
        default=2_000, ge=1, le=600_000, description="Per-try timeout of one cloud call."
    )
    tls: TlsSettings = TlsSettings()
    proxy: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        description="HTTP(S) proxy for the cloud link (environment proxy variables are ignored).",
    )
    retry: RetrySettings = RetrySettings()
    breaker: BreakerSettings = BreakerSettings()


class QueueSettings(StrictModel):
    """The durable queue of requests waiting for the cloud (diskcache in the data dir)."""

    max_items: int = Field(ge=1, le=100_000_000, description="Most items held at once.")
    max_bytes: int = Field(ge=1024, le=1 << 40, description="Most payload bytes held at once.")
    on_full: OnFull = Field(description="reject: 429 with Retry-After; drop_oldest: expire oldest.")
    ttl_s: int = Field(
        default=86_400, ge=1, le=90 * 86_400, description="Items older than this become `expired`."
    )
    fsync: Durability = Field(
        default="os_crash_safe",
        description="os_crash_safe: survives a process crash; per_write: survives power loss.",
    )


class SyncSettings(StrictModel):
    """The background worker that drains the queue to the cloud."""

    batch_size: int = Field(default=64, ge=1, le=4096)
    interval_ms: int = Field(
        default=500, ge=10, le=3_600_000, description="Pause between drain rounds when idle."
    )
    max_attempts: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Non-retryable failures before an item is dead-lettered.",
    )
    max_bytes_per_s: int | None = Field(
        default=None,
        ge=1024,
        le=1 << 40,
        description="Pace the drain to at most this many payload bytes/s (null: unpaced).",
    )


class BudgetLimit(StrictModel):
    """One budget: at most `calls` cloud calls and/or `money` spent per UTC `period`.

    Named `node/<period>/<calls|money>` under `cost.budgets` and
    `task/<task>/<period>/<calls|money>` under `tasks.<task>.budgets`; that name is what an
    exhausted request reports in its `budget` field.
    """

    period: BudgetPeriod = Field(description="hour or day (UTC): when the budget resets.")
    calls: int | None = Field(default=None, ge=0, description="Most cloud calls per period.")
    money: float | None = Field(
        default=None, ge=0.0, description="Most money (cost.currency) per period."
    )

    @model_validator(mode="after")
    def _calls_or_money(self) -> BudgetLimit:
        if self.calls is None and self.money is None:
            raise ValueError("a budget needs `calls`, `money`, or both")
        return self


class CostSettings(StrictModel):
    """Price of cloud calls and the budget they must stay within."""

    price_per_call: float = Field(default=0.0, ge=0.0, le=1_000.0)
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    daily_budget: float | None = Field(
        default=None, ge=0.0, description="Money per UTC day; null for no money budget."
    )
    daily_calls: int | None = Field(
        default=None, ge=0, description="Cloud calls per UTC day; null for no call budget."
    )
    budgets: list[BudgetLimit] = Field(
        default_factory=list,
        description="Node-wide budgets per hour/day, in calls and/or money (with daily_*).",
    )
    on_budget_exhausted: BudgetAction = Field(
        default="answer_locally",
        description="answer_locally, queue, or reject (429) when a budget is exhausted.",
    )


class CanaryRule(StrictModel):
    """When a canary or shadow model (`edgeroute model install --canary F | --shadow`)
    is promoted or rolled back, decided by the node on its own.

    After `min_requests` items the candidate ran on (compared with the current model, or
    failed), it is promoted if its top-1 label agreed with the current model's on at
    least `min_agreement` of the compared items and at most `max_error_rate` of its runs
    failed; otherwise it is rolled back.
    """

    min_requests: int = Field(
        default=200,
        ge=1,
        le=10_000_000,
        description="Items the candidate must run on (compared or failed) before the rule decides.",
    )
    min_agreement: float = Field(
        default=0.95,
        ge=0.0,
        le=1.0,
        description="Promote only if the candidate's top-1 label equals the current model's "
        "on at least this share of the compared items.",
    )
    max_error_rate: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="Roll back if more than this share of the candidate's runs failed "
        "(onnxruntime error or non-finite output); the current model answers those.",
    )


def _known_score(name: str) -> str:
    """`name` if it is a registered score (router.scores.REGISTRY) or `learned`."""
    allowed = [*SCORE_NAMES, LEARNED]
    if name not in allowed:
        names = ", ".join(repr(n) for n in allowed[:-1])
        raise ValueError(f"got {name!r}; allowed: {names} or {allowed[-1]!r}")
    return name


class TaskPolicy(StrictModel):
    """How one task is routed."""

    edge_bundle: str = Field(
        min_length=1,
        description="Edge model bundle dir (relative to the policy file, or absolute).",
    )
    bundle_task: str | None = Field(
        default=None,
        description="The task named in the edge bundle's manifest, when this task's name "
        "differs (several tasks may share one bundle); defaults to this task's name. A "
        "bundle for another task is refused.",
    )
    cloud_task: str | None = Field(
        default=None, description="Task name on the cloud; defaults to this task's name."
    )
    score: Annotated[str, AfterValidator(_known_score)] = Field(
        default="margin",
        description="Confidence score: one of router.scores' registry (max_prob, margin, "
        "entropy), or learned (needs learned_score).",
        json_schema_extra={"enum": [*SCORE_NAMES, LEARNED]},
    )
    learned_score: str | None = Field(
        default=None,
        min_length=1,
        description="JSON file of a learned score (edgeroute policy learn-score), relative "
        "to the policy file; required when score is learned.",
    )
    threshold: float = Field(ge=0.0, le=1.0, description="Escalate when score < threshold.")
    top_k: int = Field(default=3, ge=1, le=1000, description="Candidates sent to the cloud.")
    placement: Placement = "hybrid"
    when_offline: OfflineAction = "answer_and_queue"
    verify_on_cloud_failure: bool = Field(
        default=True, description="Queue for later cloud verification when an escalation fails."
    )
    deadline_ms: int = Field(
        default=500, ge=1, le=600_000, description="Default end-to-end deadline of a request."
    )
    min_cloud_ms: int = Field(
        default=20,
        ge=0,
        le=600_000,
        description="Escalate only if at least this much time is left.",
    )
    max_batch_items: int = Field(default=256, ge=1, le=10_000)
    budgets: list[BudgetLimit] = Field(
        default_factory=list,
        description="This task's own budgets per hour/day (on top of the node's).",
    )
    send: SendPolicy = Field(
        default="inputs",
        description="What may leave the device: inputs (and candidates), candidates_only "
        "(no inputs), or nothing (the task is edge-only: never escalated nor queued).",
    )

    canary: CanaryRule = Field(
        default=CanaryRule(),
        description="Rule promoting or rolling back a canary/shadow model of this task.",
    )

    @model_validator(mode="after")
    def _learned_needs_file(self) -> TaskPolicy:
        if self.score == "learned" and self.learned_score is None:
            raise ValueError("score: learned needs learned_score (a file from learn-score)")
        return self


class TrustSettings(StrictModel):
    """Which model bundles the node may load (see `edgeroute model pack/verify`)."""

    require_signed: bool = Field(
        default=False, description="Refuse bundles without a valid manifest.sig."
    )
    trusted_keys: list[str] = Field(
        default_factory=list,
        description="Ed25519 public key files (PEM), relative to the policy file or absolute.",
    )


class ApiAuthSettings(StrictModel):
    """Bearer-token auth of the edge node's `/v1/*` API (health and metrics stay open)."""

    token_env: str = Field(
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="Environment variable holding the token clients must send as "
        "`Authorization: Bearer <token>`; the node refuses to start if it is unset or empty.",
    )


class ApiSettings(StrictModel):
    """The edge node's own HTTP API."""

    auth: ApiAuthSettings | None = Field(
        default=None, description="Require a bearer token on /v1/* (null: open)."
    )


class Policy(StrictModel):
    """A whole policy file."""

    version: Literal[1] = 1
    node: NodeSettings = NodeSettings()
    cloud: CloudSettings = CloudSettings()
    queue: QueueSettings
    sync: SyncSettings = SyncSettings()
    cost: CostSettings = CostSettings()
    trust: TrustSettings = TrustSettings()
    api: ApiSettings = ApiSettings()
    tasks: dict[TaskName, TaskPolicy] = Field(min_length=1)

    def task(self, name: str) -> TaskPolicy:
        """The policy of task `name`; KeyError if undefined."""
        return self.tasks[name]
