"""Staged rollouts of a fleet release (issue 22): the rollout file's schema, which nodes a
stage reaches, and the gate that judges a stage on ML signals. Pure: no I/O, no clock.

A rollout moves one release out to the nodes of a cohort (label selector) in stages. A
node's place is `position(rollout, node_id)`, a stable hash in [0, 100): a stage of
`percent` p reaches the cohort's nodes whose position is below p, so stages only grow
and never reshuffle, and two rollouts start on different nodes. After a stage's soak time
and once enough nodes and requests report, `judge` compares the new release's nodes with
the nodes still on the old one; `step` turns the judgement into the rollout's next move.
Docs: docs/fleet.md.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Literal

from pydantic import Field, ValidationError, field_validator

from router.errors import PolicyError, PolicyIssue, RolloutError
from router.policy import StrictModel, TaskName
from router.policy_loader import read_document
from router.policy_validation_issues import KeyPath, validation_issues

OnBreach = Literal["pause", "abort"]
Verdict = Literal["wait", "advance", "breach"]
Action = Literal["stay", "advance", "complete", "pause", "abort"]
HISTOGRAM_BINS = 10
"""Bins of the confidence histogram nodes report (equal width over [0, 1])."""


class Stage(StrictModel):
    """One step of a rollout."""

    percent: float = Field(gt=0, le=100, description="Share of the cohort this stage reaches.")
    soak_s: int = Field(
        ge=0, le=30 * 86_400, description="Seconds the stage runs before it is judged."
    )
    min_nodes: int = Field(
        default=1, ge=1, le=1_000_000, description="New-release nodes reporting, at least."
    )
    min_requests: int = Field(
        default=100, ge=0, le=10**12, description="Requests those nodes answered, at least."
    )


class Gates(StrictModel):
    """Limits on the new release's nodes against the old release's (null: not checked).
    Rates are shares in [0, 1]; an increase or drop is a difference of shares."""

    max_escalation_rate_increase: float | None = Field(default=0.05, ge=0, le=1)
    max_agreement_drop: float | None = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Drop in agreement of the edge's top-1 with the cloud on escalations.",
    )
    min_agreement: float | None = Field(
        default=None, ge=0, le=1, description="Agreement with the cloud, at least."
    )
    max_error_rate_increase: float | None = Field(default=0.01, ge=0, le=1)
    max_p95_latency_ratio: float | None = Field(
        default=1.5, ge=1, le=100, description="New p95 latency over old, at most."
    )
    max_confidence_psi: float | None = Field(
        default=0.25,
        ge=0,
        le=10,
        description="Population stability index of the confidence histograms, at most.",
    )


class Rollout(StrictModel):
    """A rollout file (`version: 1`)."""

    version: Literal[1]
    name: TaskName
    release: int = Field(ge=1, description="The release version this rollout moves out.")
    cohort: dict[str, str] = Field(
        default_factory=dict, description="Node labels a node must all have (empty: every node)."
    )
    stages: list[Stage] = Field(min_length=1, max_length=20)
    gates: Gates = Gates()
    on_breach: OnBreach = Field(default="abort", description="What a gate breach does.")

    @field_validator("stages")
    @classmethod
    def _stages_grow_to_all(cls, stages: list[Stage]) -> list[Stage]:
        shares = [s.percent for s in stages]
        if any(b <= a for a, b in pairwise(shares)):
            raise ValueError(f"stage percents must grow strictly, got {shares}")
        if shares[-1] != 100:
            raise ValueError(f"the last stage must reach 100 percent, got {shares[-1]}")
        return stages


def parse_rollout(text: str, *, source: str = "<rollout>") -> Rollout:
    """Validate `text` as a rollout file; return the frozen `Rollout` or raise RolloutError
    listing every issue with its line, dotted field path and what is allowed."""
    issues: list[PolicyIssue] = []
    marks: dict[KeyPath, tuple[int, int]] = {}
    try:
        data = read_document(text, source, {}, marks, issues, "a rollout needs name and stages")
    except PolicyError as exc:
        raise RolloutError(exc.issues) from None
    rollout: Rollout | None = None
    try:
        rollout = Rollout.model_validate(data)
    except ValidationError as exc:
        issues.extend(validation_issues(exc, marks, source, Rollout))
    if issues or rollout is None:
        raise RolloutError(issues)
    return rollout


def position(rollout: str, node_id: str) -> float:
    """The node's place in [0, 100) for `rollout`: uniform, stable for the pair, and
    independent between rollouts (so different rollouts start on different nodes)."""
    digest = hashlib.sha256(f"{rollout}\0{node_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def in_cohort(labels: Mapping[str, str], cohort: Mapping[str, str]) -> bool:
    """Whether a node with `labels` has every label of `cohort` with the same value."""
    return all(labels.get(k) == v for k, v in cohort.items())


def reached(rollout: Rollout, stage: int, node_id: str, labels: Mapping[str, str]) -> bool:
    """Whether stage `stage` (0-based) of `rollout` reaches the node."""
    return in_cohort(labels, rollout.cohort) and (
        position(rollout.name, node_id) < rollout.stages[stage].percent
    )


@dataclass(frozen=True)
class ArmStats:
    """What one side of the comparison (the new release's nodes, or the old one's)
    reported during the stage: sums over its nodes, p95 over their requests."""

    nodes: int
    requests: int
    escalations: int = 0
    compared: int = 0
    agreed: int = 0
    errors: int = 0
    p95_latency_ms: float | None = None
    confidence: tuple[int, ...] = (0,) * HISTOGRAM_BINS

    @property
    def escalation_rate(self) -> float:
        """Share of requests escalated to the cloud."""
        return self.escalations / self.requests if self.requests else 0.0

    @property
    def agreement(self) -> float | None:
        """Share of escalations whose edge top-1 the cloud agreed with (None: none compared)."""
        return self.agreed / self.compared if self.compared else None

    @property
    def error_rate(self) -> float:
        """Share of requests that failed."""
        return self.errors / self.requests if self.requests else 0.0


def psi(new: Sequence[int], old: Sequence[int], floor: float = 1e-4) -> float:
    """Population stability index of two histograms over the same bins (0: the same
    shape; above ~0.25 is usually read as a shift). Empty bins count as `floor`."""
    if len(new) != len(old):
        raise ValueError(f"histograms differ in bins: {len(new)} and {len(old)}")
    n, o = sum(new) or 1, sum(old) or 1
    total = 0.0
    for a, b in zip(new, old, strict=True):
        p, q = max(a / n, floor), max(b / o, floor)
        total += (p - q) * math.log(p / q)
    return total


@dataclass(frozen=True)
class Judgement:
    """A stage's verdict, the gate values that led to it, and what breached or is awaited."""

    verdict: Verdict
    values: dict[str, float] = field(default_factory=dict)
    breaches: tuple[str, ...] = ()
    waiting_for: str | None = None


def judge(stage: Stage, gates: Gates, new: ArmStats, old: ArmStats, soaked_s: float) -> Judgement:
    """Judge a stage that has run `soaked_s` seconds. A breach is reported as soon as the
    evidence is in (enough nodes and requests), even before the soak time ends; `advance`
    needs the soak time too. Gates without an old-side value to compare with (no old
    nodes, nothing compared) are skipped, except `min_agreement`."""
    if new.nodes < stage.min_nodes:
        return Judgement("wait", waiting_for=f"{new.nodes} of {stage.min_nodes} nodes reporting")
    if new.requests < stage.min_requests:
        need = f"{new.requests} of {stage.min_requests} requests"
        return Judgement("wait", waiting_for=need)
    values, breaches = _gate_values(gates, new, old)
    if breaches:
        return Judgement("breach", values, tuple(breaches))
    if soaked_s < stage.soak_s:
        soak = f"soak {soaked_s:.0f} of {stage.soak_s} s"
        return Judgement("wait", values, waiting_for=soak)
    return Judgement("advance", values)


def _gate_values(gates: Gates, new: ArmStats, old: ArmStats) -> tuple[dict[str, float], list[str]]:
    values: dict[str, float] = {}
    breaches: list[str] = []

    def check(name: str, value: float | None, limit: float | None, above: bool = True) -> None:
        if value is None or limit is None:
            return
        values[name] = round(value, 6)
        if (value > limit) if above else (value < limit):
            breaches.append(f"{name} {value:.4f} {'>' if above else '<'} {limit}")

    has_old = old.nodes > 0 and old.requests > 0
    if has_old:
        check(
            "escalation_rate_increase",
            new.escalation_rate - old.escalation_rate,
            gates.max_escalation_rate_increase,
        )
        check("error_rate_increase", new.error_rate - old.error_rate, gates.max_error_rate_increase)
        if new.agreement is not None and old.agreement is not None:
            check("agreement_drop", old.agreement - new.agreement, gates.max_agreement_drop)
        if new.p95_latency_ms is not None and old.p95_latency_ms:
            ratio = new.p95_latency_ms / old.p95_latency_ms
            check("p95_latency_ratio", ratio, gates.max_p95_latency_ratio)
        if sum(new.confidence) and sum(old.confidence):
            check("confidence_psi", psi(new.confidence, old.confidence), gates.max_confidence_psi)
    check("agreement", new.agreement, gates.min_agreement, above=False)
    return values, breaches


@dataclass(frozen=True)
class Step:
    """What the rollout does next: stay in `stage`, move to it, finish, pause or abort."""

    action: Action
    stage: int


def step(rollout: Rollout, stage: int, judgement: Judgement) -> Step:
    """The next move after judging stage `stage` (0-based): a breach pauses or aborts (as
    `rollout.on_breach` says), an advance moves to the next stage or completes after the
    last, a wait stays."""
    if judgement.verdict == "breach":
        return Step(rollout.on_breach, stage)
    if judgement.verdict == "advance":
        last = stage + 1 >= len(rollout.stages)
        return Step("complete", stage) if last else Step("advance", stage + 1)
    return Step("stay", stage)
