"""The pure routing decision: `decide(local, state, task_policy, deadline_left_ms)` ->
`Decision`.

No I/O, no clock: the caller passes the node's state. Fast enough to run on every request
(a handful of comparisons). Every decision carries a machine-readable `reason`; the
reasons are the constants below and never change meaning. What follows a cloud outcome
(breaker refused, budget exhausted at the reservation, a failed call, a full queue) is
decided by `router.outcome.after`; the budget is checked there, at the reservation, never
read here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from router.policy import TaskPolicy
from router.wire import REQUEST_ID_CONFLICT as WIRE_ID_CONFLICT

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
REQUEST_ID_CONFLICT = WIRE_ID_CONFLICT  # the reason is the cloud's code: the id named another


# The types below are made once or more per request and never changed after: they are not
# `frozen` only because a frozen dataclass's __init__ costs more, on the hot path of every
# request (docs/performance.md). Treat them as immutable.


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
    """The edge node's state at decision time (a snapshot; the caller owns the live state)."""

    connectivity: Connectivity = "online"


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
    deadline_left_ms: float | None = None,
) -> Decision:
    """Route one request. Pure and total: always returns a Decision, never raises.

    Order of rules: `send: nothing` (privacy, before everything: such a task is never
    escalated nor queued, online or offline); edge-only placement; confidence (hybrid
    only); connectivity; deadline; otherwise escalate. `deadline_left_ms` is the time left
    for this request (defaults to the task's `deadline_ms`). The budget is not a rule here:
    an escalation reserves it, and `router.outcome.after` decides when it is exhausted.
    """
    conf, thr = local.scores.get(task.score, 0.0), task.threshold
    if task.send == "nothing":
        return Decision("edge", PRIVACY_EDGE_ONLY, conf, thr)
    if task.placement == "edge_only":
        return Decision("edge", EDGE_ONLY_TASK, conf, thr)
    if task.placement == "hybrid" and conf >= thr:
        return Decision("edge", CONFIDENT, conf, thr)
    if state.connectivity == "offline":
        return when_offline(conf, thr, task)
    left = task.deadline_ms if deadline_left_ms is None else deadline_left_ms
    if left < task.min_cloud_ms:
        return Decision("edge", DEADLINE_TOO_SHORT, conf, thr)
    wanted = CLOUD_FIRST if task.placement == "cloud_first" else BELOW_THRESHOLD
    return Decision("cloud", wanted, conf, thr, escalate=True)


def when_offline(conf: float, thr: float, task: TaskPolicy) -> Decision:
    """The decision for a request that needs the cloud while it is unreachable: the
    task's `when_offline` (a final local answer, or queued with or without a provisional
    answer). Pure."""
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
