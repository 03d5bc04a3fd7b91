"""What-if simulation and threshold calibration over a decision log. Pure: numpy only, no I/O.

A `LoggedRequest` is what the decision log keeps about one request (scores, the edge's
label, the cloud's answer when there was one) plus the true label when known. Replaying
a policy over them needs no model: every confidence score is in the log.

Accuracy model (documented in docs/ops.md):
- an edge answer is right when the edge's label equals the truth;
- a cloud answer is right when the cloud's label equals the truth, where the log has the
  cloud's answer (the request was escalated live, or synced from the queue);
- where the log has no cloud answer for a request the new policy would escalate, the
  cloud being right is *estimated* from the logged cloud answers of the same task: the
  cloud's measured accuracy on requests where the edge was right, or on those where the
  edge was wrong, whichever case this request is (`cloud_accuracy_given_edge`); the result
  says how many answers were estimated (`estimated`).
"Truth" is the labels file's label; without one, the cloud's answer is the reference
(accuracy = agreement with the cloud, only on requests with a known cloud answer).
Each request is decided by the live path's rules (`router.decision.decide`, and
`router.outcome.after` when its budget is exhausted), assuming the cloud is reachable
(connectivity is not replayed) and each request has its task's own deadline; budgets are
replayed in log order with `router.budget`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from router.budget import BudgetLedger, limits_for
from router.decision import Candidate, Decision, LocalResult, NodeState, decide
from router.outcome import after
from router.policy import Policy, TaskPolicy


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """One logged request: what simulation needs, and never its inputs."""

    request_id: str
    task: str
    ts: float
    scores: Mapping[str, float]
    edge_label: str
    cloud_label: str | None = None
    true_label: str | None = None
    edge_top: tuple[tuple[str, float], ...] = ()  # the edge's top-k (label, probability)


@dataclass(frozen=True)
class SimResult:
    """A policy replayed over a log. Rates are shares of `requests`; `accuracy` is None when
    no request has a reference answer; `estimated` counts cloud answers that were
    estimated (no logged cloud answer); `routes` maps `route/reason` to counts."""

    requests: int
    escalated: int
    cloud_calls: int
    cost: float
    accuracy: float | None
    scored: int
    estimated: int
    routes: dict[str, int] = field(default_factory=dict)
    decided: tuple[str, ...] = ()  # `route/reason` per request, in log (time) order

    @property
    def escalation_rate(self) -> float:
        """Share of requests sent (or queued) to the cloud."""
        return self.escalated / self.requests if self.requests else 0.0


def with_score(
    reqs: Sequence[LoggedRequest], name: str, values: Sequence[float]
) -> list[LoggedRequest]:
    """Copies of `reqs` with score `name` set to `values` (e.g. a learned score)."""
    return [
        dataclasses.replace(r, scores={**r.scores, name: float(v)})
        for r, v in zip(reqs, values, strict=True)
    ]


def cloud_accuracy(reqs: Iterable[LoggedRequest]) -> float | None:
    """The cloud's accuracy on the requests with both a cloud answer and a true label."""
    known = [r for r in reqs if r.cloud_label is not None and r.true_label is not None]
    return sum(r.cloud_label == r.true_label for r in known) / len(known) if known else None


def cloud_accuracy_given_edge(reqs: Iterable[LoggedRequest]) -> tuple[float, float] | None:
    """(P(cloud right | edge right), P(cloud right | edge wrong)) measured on the requests
    with a cloud answer and a true label; a side with no such request falls back to the
    overall cloud accuracy; None if there is none at all."""
    known = [r for r in reqs if r.cloud_label is not None and r.true_label is not None]
    if not known:
        return None
    overall = sum(r.cloud_label == r.true_label for r in known) / len(known)

    def rate(edge_right: bool) -> float:
        side = [r for r in known if (r.edge_label == r.true_label) == edge_right]
        return sum(r.cloud_label == r.true_label for r in side) / len(side) if side else overall

    return rate(True), rate(False)


def _estimate(r: LoggedRequest, truth: str, est: tuple[float, float] | None) -> float:
    if est is None:
        return 0.0
    return est[0] if r.edge_label == truth else est[1]


def _decided(task: TaskPolicy, r: LoggedRequest) -> Decision:
    """The live path's `decide` for a logged request: online, the task's own deadline."""
    top = tuple(Candidate(label, score) for label, score in r.edge_top)
    local = LocalResult(top or (Candidate(r.edge_label, 0.0),), dict(r.scores))
    return decide(local, _ONLINE, task)


_ONLINE = NodeState("online")


def simulate(policy: Policy, reqs: Sequence[LoggedRequest]) -> SimResult:
    """Replay `policy` over `reqs` (in log order): routes per reason, escalations, cloud
    calls and cost under the policy's budgets, and expected accuracy. Requests of tasks the
    policy does not define are counted as `unknown_task` and not scored."""
    ledger = BudgetLedger()
    cost = policy.cost
    routes: Counter[str] = Counter()
    escalated = calls = scored = estimated = 0
    correct = 0.0
    est = {
        t: cloud_accuracy_given_edge(r for r in reqs if r.task == t) for t in {r.task for r in reqs}
    }
    decided: list[str] = []
    for r in sorted(reqs, key=lambda q: q.ts):
        task = policy.tasks.get(r.task)
        if task is None:
            routes["rejected/unknown_task"] += 1
            decided.append("rejected/unknown_task")
            continue
        decision = _decided(task, r)
        if decision.escalate:
            limits = limits_for(cost, task, r.task)
            spent = ledger.exhausted(limits, cost.price_per_call, r.ts)
            if spent is not None:
                decision = after(decision, "budget_exhausted", task, cost, budget=spent)
            else:
                ledger = ledger.plus_call(limits, cost.price_per_call, r.ts)
                calls += 1
        cloud, reason = decision.escalate, decision.reason
        route = "rejected" if decision.reject else decision.route
        routes[f"{route}/{reason}"] += 1
        decided.append(f"{route}/{reason}")
        escalated += cloud or route == "queued"
        truth = r.true_label if r.true_label is not None else r.cloud_label
        if truth is None or route == "rejected":
            continue
        scored += 1
        if not cloud:
            correct += r.edge_label == truth
        elif r.cloud_label is not None:
            correct += r.cloud_label == truth
        else:
            estimated += 1
            correct += _estimate(r, truth, est.get(r.task))
    return SimResult(
        requests=len(reqs),
        escalated=escalated,
        cloud_calls=calls,
        cost=calls * cost.price_per_call,
        accuracy=correct / scored if scored else None,
        scored=scored,
        estimated=estimated,
        routes=dict(routes),
        decided=tuple(decided),
    )


def candidate_thresholds(scores: np.ndarray) -> np.ndarray:
    """0, then one short decimal strictly between each pair of consecutive distinct scores
    (so `score < t` splits them exactly and the number reads well in a policy file), then
    1.0. Ascending; thresholds escalate `score < t`."""
    uniq = np.unique(np.clip(scores, 0.0, 1.0))
    out = [0.0]
    for lo, hi in itertools.pairwise(uniq):
        out.append(_short_between(float(lo), float(hi)))
    if len(uniq) and uniq[-1] < 1.0:
        out.append(1.0)
    return np.unique(np.array(out, dtype=float))


def _short_between(lo: float, hi: float) -> float:
    """The decimal with fewest digits t such that lo < t <= hi (falls back to hi)."""
    mid = (lo + hi) / 2.0
    for digits in range(1, 16):
        t = round(mid, digits)
        if lo < t <= hi:
            return t
    return hi


@dataclass(frozen=True)
class Curve:
    """Accuracy and cost against escalation rate for one task's score, one point per
    candidate threshold (ascending)."""

    thresholds: np.ndarray
    escalation: np.ndarray
    accuracy: np.ndarray
    cost_per_1k: np.ndarray
    estimated: np.ndarray


def threshold_curve(reqs: Sequence[LoggedRequest], score: str, price_per_call: float) -> Curve:
    """Escalation rate, expected accuracy and cost per 1000 requests for every distinct
    threshold (escalate when score < threshold), budgets ignored. Vectorised."""
    s = np.array([r.scores.get(score, 0.0) for r in reqs], dtype=float)
    n = len(s)
    cands = candidate_thresholds(s)
    est = cloud_accuracy_given_edge(reqs)
    truth = [r.true_label if r.true_label is not None else r.cloud_label for r in reqs]
    has_truth = np.array([t is not None for t in truth])
    edge_ok = np.array(
        [t is not None and r.edge_label == t for r, t in zip(reqs, truth, strict=True)]
    )
    cloud_known = np.array([r.cloud_label is not None for r in reqs])
    cloud_ok = np.array(
        [t is not None and r.cloud_label == t for r, t in zip(reqs, truth, strict=True)], float
    )
    guess = np.array(
        [_estimate(r, t, est) if t is not None else 0.0 for r, t in zip(reqs, truth, strict=True)]
    )
    cloud_val = np.where(cloud_known, cloud_ok, guess)
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    # prefix sums over requests sorted by score: the first k are escalated
    gain = (cloud_val - edge_ok) * has_truth
    pre_gain = np.concatenate([[0.0], np.cumsum(gain[order])])
    pre_est = np.concatenate([[0], np.cumsum((~cloud_known & has_truth)[order])])
    k = np.searchsorted(s_sorted, cands, side="left")  # how many scores are < threshold
    base = float(np.sum(edge_ok * has_truth))
    scored = max(1, int(has_truth.sum()))
    return Curve(
        thresholds=cands,
        escalation=k / max(1, n),
        accuracy=(base + pre_gain[k]) / scored,
        cost_per_1k=k / max(1, n) * price_per_call * 1000.0,
        estimated=pre_est[k],
    )


@dataclass(frozen=True)
class Choice:
    """The calibrated threshold of one task and what it is expected to do."""

    task: str
    score: str
    threshold: float
    escalation: float
    accuracy: float
    cost_per_1k: float
    estimated: int
    index: int


def choose(
    curve: Curve,
    task: str,
    score: str,
    *,
    target_escalation: float | None = None,
    target_accuracy: float | None = None,
    budget_per_1k: float | None = None,
) -> Choice:
    """Pick the threshold meeting exactly one target: the highest escalation rate not above
    `target_escalation` (or whose cost per 1000 requests is within `budget_per_1k`), or the
    lowest escalation rate reaching `target_accuracy` (the most accurate point if none
    does). Raises ValueError unless exactly one target is given."""
    given = [t is not None for t in (target_escalation, target_accuracy, budget_per_1k)]
    if sum(given) != 1:
        raise ValueError("give exactly one of target_escalation, target_accuracy, budget_per_1k")
    if target_escalation is not None:
        ok = np.flatnonzero(curve.escalation <= target_escalation + 1e-12)
        i = int(ok[-1]) if len(ok) else 0
    elif budget_per_1k is not None:
        ok = np.flatnonzero(curve.cost_per_1k <= budget_per_1k + 1e-12)
        i = int(ok[-1]) if len(ok) else 0
    else:
        assert target_accuracy is not None
        ok = np.flatnonzero(curve.accuracy >= target_accuracy - 1e-12)
        i = int(ok[0]) if len(ok) else int(np.argmax(curve.accuracy))
    return Choice(
        task=task,
        score=score,
        threshold=float(curve.thresholds[i]),
        escalation=float(curve.escalation[i]),
        accuracy=float(curve.accuracy[i]),
        cost_per_1k=float(curve.cost_per_1k[i]),
        estimated=int(curve.estimated[i]),
        index=i,
    )
