"""Bad records and bad store files: a bad row is quarantined or repaired and the rest
flows; a file that cannot be trusted refuses to open, naming itself and the way out
(real SQLite files in tmp_path, corrupted with sqlite3 and byte writes)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from edge_node.storage.budget_store import BudgetStore
from edge_node.storage.durable_cache import DB_FILE, StoreCorrupt, open_durable_cache, put_many
from edge_node.storage.queue_store import DurableQueue, QueueStoreError
from edge_node.storage.queued_item import QueuedItem
from edge_node.storage.result_store import ResultStore
from edge_node.storage.store_reset import reset_stores
from router.policy import CostSettings, QueueSettings

SETTINGS = QueueSettings(max_items=1000, max_bytes=1 << 22, on_full="reject")


def _item(rid: str) -> QueuedItem:
    return QueuedItem(
        request_id=rid, task="t", cloud_task="t", inputs=[1.0, 2.0], candidates=["a"],
        edge_label="a", edge_score=0.5, edge_candidates=[("a", 0.5)], model_version="v",
        enqueued_at=1000.0, reason="below_threshold",
    )  # fmt: skip


def _sql(directory: Path, statement: str, params: tuple[object, ...]) -> None:
    """Run one statement on a closed store's SQLite file (as an unlucky disk or hand would)."""
    con = sqlite3.connect(directory / DB_FILE)
    try:
        assert con.execute(statement, params).rowcount == 1
        con.commit()
    finally:
        con.close()


def _queue_key(directory: Path, rid: str) -> str:
    con = sqlite3.connect(directory / DB_FILE)
    try:
        (key,) = con.execute("SELECT key FROM Cache WHERE key LIKE ?", (f"q:%:{rid}",)).fetchone()
    finally:
        con.close()
    return str(key)


def _closed_queue(directory: Path, *ids: str) -> None:
    """A queue holding one item per id, in order, closed (ready to be damaged)."""
    q = DurableQueue(directory, SETTINGS)
    q.put_many([_item(rid) for rid in ids])
    q.close()


def _keys(directory: Path) -> list[str]:
    """Every key of a closed store's SQLite file."""
    con = sqlite3.connect(directory / DB_FILE)
    try:
        return sorted(str(k) for (k,) in con.execute("SELECT key FROM Cache"))
    finally:
        con.close()


def test_undecodable_queue_row_is_quarantined_and_the_rest_flows(tmp_path: Path) -> None:
    """A non-JSON row is moved aside (listed with its id and reason, counted across
    restarts) and the items around it are read in order."""
    _closed_queue(tmp_path, "a", "b", "c")
    _sql(
        tmp_path,
        "UPDATE Cache SET value = ? WHERE key = ?",
        (b"\xffnot json", _queue_key(tmp_path, "b")),
    )
    q = DurableQueue(tmp_path, SETTINGS)
    assert [i.request_id for i in q.oldest(3)] == ["a", "c"]
    assert q.depth == 2 and q.get("b") is None and q.shelf.count == 1
    (record,) = q.shelf.records()
    assert record["request_id"] == "b" and "cannot be decoded" in str(record["reason"])
    assert "raw_hex" not in record and q.shelf.find("b") == record
    q.close()
    q = DurableQueue(tmp_path, SETTINGS)
    assert q.shelf.count == 1 and q.depth == 2
    q.close()


def test_malformed_queue_key_is_rebuilt_from_an_intact_row(tmp_path: Path) -> None:
    """A key that does not parse, over an intact item, is re-keyed (nothing lost); over an
    undecodable row it is quarantined; opening never raises."""
    _closed_queue(tmp_path, "a", "b", "c")
    _sql(tmp_path, "UPDATE Cache SET key = 'q:broken' WHERE key = ?", (_queue_key(tmp_path, "a"),))
    _sql(
        tmp_path,
        "UPDATE Cache SET key = 'q:x', value = ? WHERE key = ?",
        (b"{", _queue_key(tmp_path, "b")),
    )
    q = DurableQueue(tmp_path, SETTINGS)
    assert [i.request_id for i in q.oldest(5)] == ["c", "a"]
    assert q.shelf.count == 1 and q.shelf.records()[0]["request_id"] is None
    q.close()


def test_undecodable_result_is_quarantined_not_forgotten(tmp_path: Path) -> None:
    """A non-JSON result record answers `quarantined` (never unknown) and is counted."""
    rs = ResultStore(tmp_path)
    rs.put_done("a", {"label": "x"})
    rs.put_done("b", {"label": "y"})
    rs.close()
    _sql(tmp_path, "UPDATE Cache SET value = ? WHERE key = 'r:b'", (b"\x00garbage",))
    rs = ResultStore(tmp_path)
    assert (rs.get("a") or {})["status"] == "done"
    record = rs.get("b") or {}
    assert record["status"] == "quarantined" and "raw_hex" not in record
    assert rs.counts()["quarantined"] == 1 and rs.counts()["done"] == 1
    assert [r["request_id"] for r in rs.records("quarantined")] == ["b"]
    rs.close()


def test_undecodable_budget_ledger_refuses_instead_of_zero_spend(tmp_path: Path) -> None:
    """A budget ledger that cannot be decoded refuses to open, naming the file and the
    explicit reset, instead of counting today's spend from zero."""
    store = BudgetStore(
        tmp_path, CostSettings(price_per_call=1.0, daily_calls=10), clock=lambda: 1e9
    )
    reservation = store.reserve()
    assert reservation is not None
    reservation.commit()
    store.close()
    _sql(tmp_path, "UPDATE Cache SET value = ? WHERE key = 'budget_ledger'", (b"{not json",))
    with pytest.raises(StoreCorrupt) as info:
        BudgetStore(tmp_path, CostSettings(), clock=lambda: 1e9)
    assert str(tmp_path / DB_FILE) in info.value.message
    assert "--reset-store budget" in info.value.message and info.value.status == 503


def _filled(directory: Path) -> int:
    cache = open_durable_cache(directory, store="queue")
    put_many(cache, [(f"q:{i}", os.urandom(600)) for i in range(400)])
    cache.close()
    return (directory / DB_FILE).stat().st_size


@pytest.mark.parametrize("damage", ["zero_bytes", "truncated", "garbage_block", "not_sqlite"])
def test_untrustworthy_store_file_refuses_to_open_and_is_left_alone(
    tmp_path: Path, damage: str
) -> None:
    """An emptied, truncated, overwritten or foreign file raises StoreCorrupt naming the
    file and the reset, and the file keeps its bytes."""
    size = _filled(tmp_path)
    db = tmp_path / DB_FILE
    with db.open("r+b") as f:
        if damage == "zero_bytes":
            f.truncate(0)
        elif damage == "truncated":
            f.truncate(size // 2)
        elif damage == "garbage_block":
            f.seek(4096)
            f.write(os.urandom(8192))
        else:
            f.write(b"this is not a database" * 10)
    before = db.read_bytes()
    with pytest.raises(StoreCorrupt) as info:
        open_durable_cache(tmp_path, store="queue")
    assert str(db) in info.value.message and "--reset-store queue" in info.value.message
    assert db.read_bytes() == before


def test_reset_moves_only_a_refused_store_aside_and_says_what_is_lost(tmp_path: Path) -> None:
    """--reset-store renames a store the node would refuse (kept for forensics) and names
    the loss; a healthy store and a missing one are left alone; an unknown name is
    refused."""
    (tmp_path / "budget").mkdir()
    (tmp_path / "budget" / DB_FILE).write_bytes(b"")
    q = DurableQueue(tmp_path / "queue", SETTINGS)
    q.put(_item("kept"))
    q.close()
    out = reset_stores(tmp_path, ("budget", "queue", "results"), now=0.0)
    (budget, moved, lost), (queue, left, why), (results, absent, _) = out
    assert (budget, queue, results) == ("budget", "queue", "results")
    assert moved is not None and moved.name == "budget.reset-19700101T000000Z"
    assert (moved / DB_FILE).exists() and not (tmp_path / "budget").exists()
    assert "spend" in lost and left is None and absent is None and "cleanly" in why
    q = DurableQueue(tmp_path / "queue", SETTINGS)
    assert q.get("kept") == _item("kept")
    q.close()
    with pytest.raises(ValueError, match="allowed: queue, results, budget"):
        reset_stores(tmp_path, ("models",))


def test_faults_that_pass_are_not_reported_as_corruption(tmp_path: Path) -> None:
    """A store SQLite cannot open for a reason other than damage (here: a directory where
    the file should be) raises the store's ordinary error, never StoreCorrupt and its
    advice to reset."""
    (tmp_path / DB_FILE).mkdir()
    with pytest.raises(QueueStoreError) as info:
        DurableQueue(tmp_path, SETTINGS)
    assert not isinstance(info.value, StoreCorrupt) and "--reset-store" not in info.value.message


def test_read_only_queue_skips_bad_rows_without_writing(tmp_path: Path) -> None:
    """A read-only queue (`queue list` beside a running node) skips an undecodable row and
    a malformed key without quarantining or repairing them; the node's queue then does."""
    _closed_queue(tmp_path, "a", "b", "c")
    _sql(tmp_path, "UPDATE Cache SET value = ? WHERE key = ?", (b"{", _queue_key(tmp_path, "b")))
    _sql(tmp_path, "UPDATE Cache SET key = 'q:x' WHERE key = ?", (_queue_key(tmp_path, "c"),))
    before = _keys(tmp_path)
    reader = DurableQueue(tmp_path, SETTINGS, read_only=True)
    assert [i.request_id for i in reader.oldest(5)] == ["a"] and reader.shelf.count == 0
    reader.close()
    assert _keys(tmp_path) == before and "q:x" in before
    node = DurableQueue(tmp_path, SETTINGS)
    assert [i.request_id for i in node.oldest(5)] == ["a", "c"] and node.shelf.count == 1
    node.close()


def test_queue_cli_on_an_emptied_store_refuses_without_traceback(tmp_path: Path) -> None:
    """`edgeroute queue stats` on a 0-byte queue file exits 2 naming the store and the
    reset, with no traceback and the file untouched."""
    import subprocess

    from edgeroute import processes

    bad = tmp_path / "queue"
    bad.mkdir()
    (bad / DB_FILE).write_bytes(b"")
    out = subprocess.run(
        processes.edgeroute_cmd("queue", "stats", "--data-dir", str(tmp_path)),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert str(bad / DB_FILE) in out.stderr and "--reset-store queue" in out.stderr
    assert (bad / DB_FILE).stat().st_size == 0
