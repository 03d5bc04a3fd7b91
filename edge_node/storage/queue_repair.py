"""Rebuilding queue keys that do not parse from the rows they name."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import diskcache
from pydantic import ValidationError

from edge_node.storage.durable_cache import delete_many, get_many, put_many
from edge_node.storage.queue_keys import QueueEntry, make_key
from edge_node.storage.queued_item import QueuedItem

BadRow = tuple[str, str | None, str]
"""(key, request_id if known, reason) of a row to quarantine."""


def decode_item(raw: bytes) -> QueuedItem | None:
    """The item a queue row holds, or None if the row cannot be decoded."""
    try:
        return QueuedItem.model_validate_json(raw)
    except ValidationError:
        return None


def rekey(
    keys: Sequence[str],
    raws: Mapping[str, bytes],
    next_seq: int,
    known: Collection[str],
) -> tuple[list[QueueEntry], list[tuple[str, bytes]], list[BadRow]]:
    """For rows whose key does not parse: (new index entries, numbered from `next_seq` in
    `keys` order; the rows to write under their new keys; the rows to quarantine). A row
    whose value is an intact item whose id is not in `known` gets a new key (its seq at the
    end of the queue); a row that cannot be decoded, or repeats a known id, is
    quarantined. Pure."""
    fixed: list[QueueEntry] = []
    rows: list[tuple[str, bytes]] = []
    bad: list[BadRow] = []
    seen = set(known)
    for key in keys:
        raw = raws.get(key)
        item = None if raw is None else decode_item(raw)
        if raw is None or item is None:
            bad.append((key, None, "malformed queue key and undecodable row"))
            continue
        if item.request_id in seen:
            bad.append((key, item.request_id, "malformed queue key of a duplicate id"))
            continue
        seq = next_seq + len(fixed)
        new_key = make_key(seq, len(raw), item.enqueued_at, item.task, item.request_id)
        fixed.append(
            QueueEntry(new_key, seq, len(raw), item.enqueued_at, item.task, item.request_id)
        )
        rows.append((new_key, raw))
        seen.add(item.request_id)
    return fixed, rows, bad


def repair(
    cache: diskcache.Cache, keys: Sequence[str], next_seq: int, known: Collection[str]
) -> tuple[list[QueueEntry], list[BadRow]]:
    """Re-key the intact rows among `keys` (`rekey`), writing them under their new keys
    and deleting the old ones in one transaction; returns (their new index entries, the
    rows left to quarantine). Raises what the cache raises, with nothing written."""
    fixed, rows, bad = rekey(keys, get_many(cache, list(keys)), next_seq, known)
    if rows:
        quarantined = {b[0] for b in bad}
        with cache.transact():
            put_many(cache, rows)
            delete_many(cache, [k for k in keys if k not in quarantined])
    return fixed, bad
