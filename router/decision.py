"""The pure routing decision: `decide(local, state, task_policy, cost, now)` -> `Decision`.

No I/O, no clock: the caller passes the time and the node's state. Fast enough to run on
every request (a handful of comparisons). Every decision carries a machine-readable
`reason`; the reasons are the constants below and never change meaning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from router.budget import BudgetLedger, limits_for
from router.policy import CostSettings, TaskPolicy

Route = Literal["edge", "cloud", "queued"]
Connectivity = Literal["online", "degraded", "offline"]

# Reasons (machine-readable, stable).
CONFIDENT = "confident"
EDGE_ONLY_TASK = "edge_only_task"
PRIVACY_EDGE_ONLY = "privacy_edge_only"  # the task's policy says `send: nothing`
CLOUD_NEEDS_INPUTS = "cloud_needs_inputs"  # `send: candidates_only`, the cloud needs inputs
BELOW_THRESHOLD = "below_threshold"
CLOUD_FIRST = "cloud_first"
CLOUD_UNREACHABLE = "cloud_unreachable"
BUDGET_EXHAUSTED = "budget_exhausted"
DEADLINE_TOO_SHORT = "deadline_too_short"
CLOUD_TIMEOUT = "cloud_timeout"
CLOUD_ERROR = "cloud_error"
QUEUE_FULL = "queue_full"


# The four types below are made once or more per request and never changed after: they
# are not `frozen` only because a frozen dataclass's __init__ costs 2-3x more (about 1 us
# for a Decision), on the hot path of every request. Treat them as immutable.


@dataclass(slots=True)
class Candidate:
    """One label the edge proposes, with its edge probability."""

    label: str
    score: float


@dataclass(slots=True)
class LocalResult:
    """What the edge model said about one input."""

    candidates: tuple[Candidate, ...]  # best first, at least top_k long where possible
    scores: dict[str, float]  # every confidence score by name (see router.scores)

    @property
    def label(self) -> str:
        return self.candidates[0].label


@dataclass(slots=True)
class NodeState:
    """The edge node's state at decision time (a snapshot; the caller owns the live state).

    `budget` is the ledger, or a zero-argument function returning it: `decide` calls it only
    when it reaches the budget rule, so confident and edge-only requests never read it.
    """

    connectivity: Connectivity = "online"
    budget: BudgetLedger | Callable[[], BudgetLedger] = field(default_factory=BudgetLedger)

    def ledger(self) -> BudgetLedger:
        """The budget ledger (calling the provider if one was given)."""
        return self.budget if isinstance(self.budget, BudgetLedger) else self.budget()


@dataclass(slots=True)
class Decision:
    """What to do with one request.

    route: where the answer comes from now. `escalate`: call the cloud now. `enqueue`: store
    durably for later sync. `answer_now`: respond with the local answer (provisional when
    enqueued); False means the client gets 202 and fetches the result later. `reject` means the
    request is refused (429) and nothing is stored. `budget` names the exhausted budget
    (e.g. `task/digits/hour/calls`) when the reason is `budget_exhausted`.
    """

    route: Route
    reason: str
    confidence: float
    threshold: float
    escalate: bool = False
    enqueue: bool = False
    answer_now: bool = True
    reject: bool = False
    budget: str | None = None

    @property
    def final(self) -> bool:
        """Whether the answer given now is final (not awaiting cloud verification)."""
        return not self.enqueue


def decide(
    local: LocalResult,
    state: NodeState,
    task: TaskPolicy,
    cost: CostSettings,
    now: float,
    deadline_left_ms: float | None = None,
    *,
    task_name: str | None = None,
) -> Decision:
    """Route one request. Pure and total: always returns a Decision, never raises.

    Order of rules: `send: nothing` (privacy, before everything: such a task is never
    escalated nor queued, online or offline); edge-only placement; confidence (hybrid
    only); budget; connectivity; deadline. `now` is a UNIX time in seconds (for budget
    periods); `deadline_left_ms` is the time left for this request (defaults to the
    task's `deadline_ms`); `task_name` selects the task's own budgets
    (`tasks.<name>.budgets`) in the ledger.
    """
    conf, thr = local.scores.get(task.score, 0.0), task.threshold
    if task.send == "nothing":
        return Decision("edge", PRIVACY_EDGE_ONLY, conf, thr)
    if task.placement == "edge_only":
        return Decision("edge", EDGE_ONLY_TASK, conf, thr)
    if task.placement == "hybrid" and conf >= thr:
        return Decision("edge", CONFIDENT, conf, thr)
    wanted = CLOUD_FIRST if task.placement == "cloud_first" else BELOW_THRESHOLD

    limits = limits_for(cost, task, task_name)
    # no limits, nothing to exhaust: the ledger (a disk read in the node) is not needed
    spent = state.ledger().exhausted(limits, cost.price_per_call, now) if limits else None
    if spent is not None:
        action = cost.on_budget_exhausted
        if action == "queue":
            return Decision("queued", BUDGET_EXHAUSTED, conf, thr, enqueue=True, budget=spent)
        if action == "reject":
            return Decision(
                "edge", BUDGET_EXHAUSTED, conf, thr, reject=True, answer_now=False, budget=spent
            )
        return Decision("edge", BUDGET_EXHAUSTED, conf, thr, budget=spent)

    if state.connectivity == "offline":
        if task.when_offline == "answer_only":
            return Decision("edge", CLOUD_UNREACHABLE, conf, thr)
        return Decision(
            "queued",
            CLOUD_UNREACHABLE,
            conf,
            thr,
            enqueue=True,
            answer_now=task.when_offline == "answer_and_queue",
        )

    left = task.deadline_ms if deadline_left_ms is None else deadline_left_ms
    if left < task.min_cloud_ms:
        return Decision("edge", DEADLINE_TOO_SHORT, conf, thr)
    return Decision("cloud", wanted, conf, thr, escalate=True)


def on_cloud_failure(decision: Decision, task: TaskPolicy, *, timed_out: bool) -> Decision:
    """The decision after an escalation failed: the local answer, queued for verification
    if the policy says so. Pure."""
    reason = CLOUD_TIMEOUT if timed_out else CLOUD_ERROR
    return Decision(
        "edge",
        reason,
        confidence=decision.confidence,
        threshold=decision.threshold,
        enqueue=task.verify_on_cloud_failure,
    )


def on_inputs_required(decision: Decision) -> Decision:
    """The decision after the cloud refused an item of a `send: candidates_only` task
    because its model needs the inputs: the local answer, final, never queued (a retry
    would be refused the same way). Pure."""
    return Decision(
        "edge",
        CLOUD_NEEDS_INPUTS,
        confidence=decision.confidence,
        threshold=decision.threshold,
    )
