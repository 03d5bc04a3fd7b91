"""The SQLite key of each durable-queue item, which alone says where the item stands.

    q:<seq, 20 digits>:<size bytes>:<enqueued_at>:<task>:<request_id>

`DurableQueue` rebuilds its in-memory index (order, byte count, ages) from these keys when
it is opened, without reading a payload. Pure: no disk, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

ITEM_PREFIX = "q:"
"""Every queue item's key starts with this; other keys in the cache are not items."""


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """What the index keeps of one queued item: its key and the fields the key encodes."""

    key: str
    seq: int
    size: int
    enqueued_at: float
    task: str
    request_id: str


def make_key(seq: int, size: int, enqueued_at: float, task: str, request_id: str) -> str:
    """The key of an item; `seq` is zero-padded so keys sort in queue order."""
    return f"{ITEM_PREFIX}{seq:020d}:{size}:{enqueued_at!r}:{task}:{request_id}"


def parse_key(key: str) -> QueueEntry:
    """The entry a `make_key` key encodes (`request_id` may itself hold ':'). Raises
    ValueError for a key that does not have that form."""
    seq, size, at, task, request_id = key[len(ITEM_PREFIX) :].split(":", 4)
    return QueueEntry(key, int(seq), int(size), float(at), task, request_id)
