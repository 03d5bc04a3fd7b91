"""One request waiting in the durable queue for the cloud."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from router.errors import RequestIdConflict


class QueuedItem(BaseModel):
    """One request waiting for cloud verification. Never logged (it holds the inputs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str = Field(min_length=1)
    task: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    cloud_task: str = Field(min_length=1)
    inputs: list[float] | None  # None: the task's policy sends candidates only
    candidates: list[str]
    edge_label: str
    edge_score: float
    edge_candidates: list[tuple[str, float]]
    model_version: str
    enqueued_at: float
    attempts: int = 0
    last_error: str | None = None
    reason: str

    def same_request(self, other: QueuedItem) -> bool:
        """True when `other` carries the same request as this item (same task and inputs;
        for a `send: candidates_only` task, whose inputs are not kept, the same candidates):
        a client's retry, not a reuse of its id for another request."""
        if not self.same_inputs(other.task, other.inputs):
            return False
        return self.inputs is not None or self.candidates == other.candidates

    def same_inputs(self, task: str, inputs: list[float] | None) -> bool:
        """True when a request of `task` with `inputs` (None: not kept) could be this one."""
        return self.task == task and self.inputs == inputs


def id_conflict(request_id: str, what: str) -> RequestIdConflict:
    """The 409 refusing `request_id`, already queued for `what`."""
    return RequestIdConflict(
        f"request_id {request_id!r} is already queued for {what}; "
        "use a new request_id for new inputs",
        field="request_id",
    )


def reuse_outcome(queued: QueuedItem | None, item: QueuedItem) -> list[str] | RequestIdConflict:
    """What putting `item` does while its request_id is queued as `queued` (None: the
    queued row could not be read and was quarantined): [] for the same request (a retry:
    nothing changes), else `RequestIdConflict` (409): one id names one request. Pure."""
    if queued is not None and queued.same_request(item):
        return []
    what = "a request that could not be read" if queued is None else "a different request"
    return id_conflict(item.request_id, what)
