"""What one sync round did, the batch it sends, and the result it stores per item."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from edge_node.escalation import Call, Settled
from edge_node.observe.decision_log import SYNCED_REASON
from edge_node.storage.queued_item import QueuedItem
from router.wire import RerankResult

SYNCED = SYNCED_REASON
EXPIRED_TTL = "ttl_expired"


@dataclass(frozen=True, slots=True)
class SyncReport:
    """What one round did. `sent`: items sent to the cloud; `done`: results stored;
    `failed`: items that got an attempt counted; `dead`: items dead-lettered;
    `expired`: items expired by ttl; `skipped_offline`: the monitor refused the call;
    `bytes_sent`: the items' JSON bytes, counted only when `sync.max_bytes_per_s` paces
    the drain (else 0); `pace_s`: the pause asked for after this round;
    `paused_credentials`: the cloud refused the node's credentials, nothing was counted
    against the items."""

    sent: int = 0
    done: int = 0
    failed: int = 0
    dead: int = 0
    expired: int = 0
    skipped_offline: bool = False
    bytes_sent: int = 0
    pace_s: float = 0.0
    over_budget: int = 0
    paused_credentials: bool = False


@dataclass(slots=True)
class RoundBatch:
    """The items of one round that go on the wire, with their calls."""

    calls: list[Call] = dataclasses.field(default_factory=list)
    sendable: list[QueuedItem] = dataclasses.field(default_factory=list)
    failed: int = 0
    dead: int = 0
    over: int = 0
    nbytes: int = 0


@dataclass(frozen=True, slots=True)
class AnsweredRound:
    """A batch the cloud answered: its sent items and how each ended wait to be stored;
    `report` is the round's report before storing (no `done` yet)."""

    items: list[QueuedItem]
    settled: list[Settled]
    report: SyncReport


def add_reports(a: SyncReport, b: SyncReport) -> SyncReport:
    """Two rounds' reports summed; `skipped_offline` and `paused_credentials` are b's."""
    return SyncReport(
        sent=a.sent + b.sent,
        done=a.done + b.done,
        failed=a.failed + b.failed,
        dead=a.dead + b.dead,
        expired=a.expired + b.expired,
        skipped_offline=b.skipped_offline,
        bytes_sent=a.bytes_sent + b.bytes_sent,
        pace_s=a.pace_s + b.pace_s,
        over_budget=a.over_budget + b.over_budget,
        paused_credentials=b.paused_credentials,
    )


def done_record(item: QueuedItem, res: RerankResult) -> dict[str, Any]:
    """The final result stored for a synced item (no inputs)."""
    return {
        "request_id": item.request_id,
        "task": item.task,
        "cloud_task": res.task,
        "label": res.label,
        "score": res.score,
        "candidates": [{"label": c.label, "score": c.score} for c in res.candidates],
        "model_version": res.model_version,
        "scored": res.scored,
        "route": "cloud",
        "reason": SYNCED,
        "edge_label": item.edge_label,
        "edge_score": item.edge_score,
        "edge_model_version": item.model_version,
    }
