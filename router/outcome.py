"""What follows a cloud outcome: the next decision, the budget charge and the breaker.

Pure rules shared by the live path and the sync worker (`edge_node.escalation` carries
them out), so both paths charge and count the same outcome the same way:

- `after(decision, outcome, task, cost)`: the decision once an escalation (or the queue
  write that carries a decision out) ended in `outcome`;
- `settle(result)`: whether the reserved budget charge of one item is committed (a fresh
  cloud answer: the cloud computed it now) or released (a cached answer, computed and
  charged when it was first sent, or any failure);
- `breaker_effect(error)`: what a call's outcome tells the connectivity breaker: an answer
  or a refusal (4xx) shows the cloud is reachable; a retryable error (unreachable,
  timeout, overload) is a failure; a refusal of the node's credentials (401/403) shows the
  cloud reachable but the node locked out;
- `sync_effect(error)`: what a sync round's whole-call error does to its queued items:
  nothing for a retryable error or refused credentials (the round is retried later; for
  credentials the sync pauses until they work again), one attempt each otherwise.
"""

from __future__ import annotations

from typing import Literal

from router.decision import (
    BUDGET_EXHAUSTED,
    CLOUD_ERROR,
    CLOUD_NEEDS_INPUTS,
    CLOUD_TIMEOUT,
    QUEUE_FULL,
    REQUEST_ID_CONFLICT,
    Decision,
    when_offline,
)
from router.errors import CloudError, CloudUnauthorized
from router.policy import CostSettings, TaskPolicy
from router.wire import INPUTS_REQUIRED, RerankFailure, RerankResult

Outcome = Literal[
    "answered",
    "breaker_refused",
    "budget_exhausted",
    "cloud_timeout",
    "cloud_error",
    "inputs_required",
    "queue_full",
    "request_id_conflict",
]
Settlement = Literal["commit", "release"]
BreakerEffect = Literal["success", "failure", "credentials_rejected"]
SyncEffect = Literal["retry_later", "count_attempt", "pause_credentials"]


def after(
    decision: Decision,
    outcome: Outcome,
    task: TaskPolicy,
    cost: CostSettings,
    *,
    budget: str | None = None,
) -> Decision:
    """The decision that follows `decision` once carrying it out ended in `outcome`. Pure
    and total.

    - `answered`: `decision` itself (the cloud's answer is the answer);
    - `breaker_refused` (the breaker is open): the task's `when_offline`;
    - `budget_exhausted` (the reservation was refused; `budget` names the exhausted
      budget): `cost.on_budget_exhausted`: a local answer, queued, or rejected (429);
    - `cloud_timeout` / `cloud_error`: the local answer, queued for verification when
      `task.verify_on_cloud_failure`;
    - `inputs_required` (the cloud's model needs the inputs a `send: candidates_only` task
      keeps): the local answer, final, never queued (a retry would be refused the same);
    - `request_id_conflict` (the cloud holds another request under this id): rejected
      (409 `request_id_conflict`), never answered with the other request's result;
    - `queue_full` (the durable queue refused the item): a `queued` route is rejected
      (reason `queue_full`; the queue's error is the answer); a failed escalation queued
      only for verification is answered locally, final.
    """
    conf, thr = decision.confidence, decision.threshold
    if outcome == "answered":
        return decision
    if outcome == "breaker_refused":
        return when_offline(conf, thr, task)
    if outcome == "budget_exhausted":
        action = cost.on_budget_exhausted
        if action == "queue":
            return Decision("queued", BUDGET_EXHAUSTED, conf, thr, enqueue=True, budget=budget)
        if action == "reject":
            return Decision(
                "edge", BUDGET_EXHAUSTED, conf, thr, reject=True, answer_now=False, budget=budget
            )
        return Decision("edge", BUDGET_EXHAUSTED, conf, thr, budget=budget)
    if outcome in ("cloud_timeout", "cloud_error"):
        reason = CLOUD_TIMEOUT if outcome == "cloud_timeout" else CLOUD_ERROR
        return Decision("edge", reason, conf, thr, enqueue=task.verify_on_cloud_failure)
    if outcome == "inputs_required":
        return Decision("edge", CLOUD_NEEDS_INPUTS, conf, thr)
    if outcome == "request_id_conflict":
        return Decision("edge", REQUEST_ID_CONFLICT, conf, thr, reject=True, answer_now=False)
    if decision.route == "queued":
        return Decision(
            "queued", QUEUE_FULL, conf, thr, reject=True, answer_now=False, budget=decision.budget
        )
    return Decision("edge", decision.reason, conf, thr, budget=decision.budget)


def settle(result: RerankResult | RerankFailure | None) -> Settlement:
    """What to do with one item's reserved charge once its call ended: `commit` for a fresh
    cloud answer, `release` for a cached one, an item failure, or no answer (None: the call
    failed). Pure."""
    return "commit" if isinstance(result, RerankResult) and not result.cached else "release"


def breaker_effect(error: CloudError | None) -> BreakerEffect:
    """What a call that ended with `error` (None: the cloud answered) tells the breaker:
    `failure` for a retryable error (unreachable, timeout, overload),
    `credentials_rejected` for a 401/403 (the cloud was reached, the node's token was not
    accepted), `success` otherwise (an answer, or a refusal: the cloud was reached). Pure."""
    if error is None:
        return "success"
    if isinstance(error, CloudUnauthorized):
        return "credentials_rejected"
    return "failure" if error.retryable else "success"


def sync_effect(error: CloudError) -> SyncEffect:
    """What a sync round whose whole cloud call ended with `error` does to its queued items.
    Pure and total.

    - `retry_later`: a retryable error (unreachable, timeout, overload): items untouched;
    - `pause_credentials`: the cloud refused the node's credentials (401/403): items
      untouched (no attempt counted), the sync pauses until the credentials work again;
    - `count_attempt`: any other refusal (the items themselves were refused): one attempt
      per item, dead-lettered after `sync.max_attempts`.
    """
    if error.retryable:
        return "retry_later"
    if isinstance(error, CloudUnauthorized):
        return "pause_credentials"
    return "count_attempt"


_ITEM_OUTCOMES: dict[str, Outcome] = {
    INPUTS_REQUIRED: "inputs_required",
    REQUEST_ID_CONFLICT: "request_id_conflict",
}


def item_outcome(code: str) -> Outcome:
    """The outcome of one item the cloud failed with error `code`: `inputs_required`,
    `request_id_conflict`, else `cloud_error`. Pure."""
    return _ITEM_OUTCOMES.get(code, "cloud_error")


def retry_can_succeed(outcome: Outcome) -> bool:
    """Whether sending a failed queued item again can end otherwise: not when the cloud's
    model needs inputs the item does not carry, nor when its id names another item (the
    sync worker dead-letters those at once). Pure."""
    return outcome not in ("inputs_required", "request_id_conflict")
