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
from types import MappingProxyType
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationError, field_validator

from router.errors import PolicyError, PolicyIssue, RolloutError
from router.policy import StrictModel, name_check
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
        default=100, ge=1, le=10**12, description="Requests those nodes answered, at least."
    )
    min_compared: int = Field(
        default=20,
        ge=1,
        le=10**12,
        description="Escalations with a cloud answer to compare, at least (agreement gates).",
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
    name: Annotated[str, AfterValidator(name_check("rollout"))]
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
    listing every issue, in line order, with its line, dotted field path and what is
    allowed. `${VAR}` references are not read from the environment: a `${VAR:-default}`
    takes its default, a bare `${VAR}` is an issue."""
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
        issues.sort(key=lambda i: (i.line or 0, i.column or 0))
        raise RolloutError(issues)
    return rollout


def position(rollout: str, node_id: str) -> float:
    """The node's place in [0, 100) for `rollout`: uniform, stable for the pair, and
    independent between rollouts (so different rollouts start on different nodes)."""
    digest = hashlib.sha256(f"{rollout}\0{node_id}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / 2**53 * 100  # exact: never 100


def in_cohort(labels: Mapping[str, str], cohort: Mapping[str, str]) -> bool:
    """Whether a node with `labels` has every label of `cohort` with the same value."""
    return all(labels.get(k) == v for k, v in cohort.items())


def reached(rollout: Rollout, stage: int, node_id: str, labels: Mapping[str, str]) -> bool:
    """Whether stage `stage` (0-based) of `rollout` reaches the node. Raises ValueError
    for a stage the rollout does not have."""
    _check_stage(rollout, stage)
    return in_cohort(labels, rollout.cohort) and (
        position(rollout.name, node_id) < rollout.stages[stage].percent
    )


def _check_stage(rollout: Rollout, stage: int) -> None:
    if not 0 <= stage < len(rollout.stages):
        raise ValueError(
            f"rollout {rollout.name} has stages 0-{len(rollout.stages) - 1}, not {stage}"
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

    def __post_init__(self) -> None:
        counts = (
            self.nodes,
            self.requests,
            self.escalations,
            self.compared,
            self.agreed,
            self.errors,
        )
        if min(counts) < 0:
            raise ValueError("counts must not be negative")
        if self.agreed > self.compared or max(self.escalations, self.errors) > self.requests:
            raise ValueError("agreed <= compared and escalations, errors <= requests")
        if len(self.confidence) != HISTOGRAM_BINS or min(self.confidence) < 0:
            raise ValueError(f"the confidence histogram has {HISTOGRAM_BINS} counts >= 0")

    @property
    def escalation_rate(self) -> float | None:
        """Share of requests escalated to the cloud (None: no requests)."""
        return self.escalations / self.requests if self.requests else None

    @property
    def agreement(self) -> float | None:
        """Share of escalations whose edge top-1 the cloud agreed with (None: none compared)."""
        return self.agreed / self.compared if self.compared else None

    @property
    def error_rate(self) -> float | None:
        """Share of requests that failed (None: no requests)."""
        return self.errors / self.requests if self.requests else None


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
    values: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    breaches: tuple[str, ...] = ()
    waiting_for: str | None = None


def judge(stage: Stage, gates: Gates, new: ArmStats, old: ArmStats, soaked_s: float) -> Judgement:
    """Judge a stage that has run `soaked_s` seconds. Until `min_nodes` nodes and
    `min_requests` requests (and, when an agreement gate is on, `min_compared` compared
    escalations) have reported, the verdict is `wait` with no values. Then a breach is
    reported at once, even before the soak time ends; `advance` needs the soak time too.
    A gate comparing with the old release is skipped when the old side has no value for
    it (no requests, nothing compared, no latency or histogram). Values are compared with
    their limits after rounding to 6 decimals, as they are recorded."""
    if new.nodes < stage.min_nodes:
        return Judgement("wait", waiting_for=f"{new.nodes} of {stage.min_nodes} nodes reporting")
    if new.requests < stage.min_requests:
        need = f"{new.requests} of {stage.min_requests} requests"
        return Judgement("wait", waiting_for=need)
    agreement_gated = gates.min_agreement is not None or gates.max_agreement_drop is not None
    if agreement_gated and new.compared < stage.min_compared:
        need = f"{new.compared} of {stage.min_compared} escalations compared with the cloud"
        return Judgement("wait", waiting_for=need)
    values, breaches = _gate_values(gates, new, old)
    frozen = MappingProxyType(values)
    if breaches:
        return Judgement("breach", frozen, tuple(breaches))
    if soaked_s < stage.soak_s:
        soak = f"soak {math.floor(soaked_s)} of {stage.soak_s} s"
        return Judgement("wait", frozen, waiting_for=soak)
    return Judgement("advance", frozen)


def _gate_values(gates: Gates, new: ArmStats, old: ArmStats) -> tuple[dict[str, float], list[str]]:
    values: dict[str, float] = {}
    breaches: list[str] = []

    def check(name: str, value: float | None, limit: float | None, above: bool = True) -> None:
        if value is None or limit is None:
            return
        value = round(value, 6)
        values[name] = value
        if (value > limit) if above else (value < limit):
            breaches.append(f"{name} {value} {'>' if above else '<'} {limit}")

    def diff(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    check(
        "escalation_rate_increase",
        diff(new.escalation_rate, old.escalation_rate),
        gates.max_escalation_rate_increase,
    )
    check(
        "error_rate_increase", diff(new.error_rate, old.error_rate), gates.max_error_rate_increase
    )
    check("agreement_drop", diff(old.agreement, new.agreement), gates.max_agreement_drop)
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
    last, a wait stays. Raises ValueError for a stage the rollout does not have."""
    _check_stage(rollout, stage)
    if judgement.verdict == "breach":
        return Step(rollout.on_breach, stage)
    if judgement.verdict == "advance":
        last = stage + 1 >= len(rollout.stages)
        return Step("complete", stage) if last else Step("advance", stage + 1)
    return Step("stay", stage)
