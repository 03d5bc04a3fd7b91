"""One way to open the node's on-disk stores (queue, results, budget) with diskcache, and
batched row writes for the stores that write many items per transaction.

The guarantees, the same for every store: nothing is ever evicted (a plain
`diskcache.Cache` evicts by default), SQLite runs in WAL mode, every value stays inside
SQLite (diskcache does not fsync the side files it uses for large values), and the commit
durability is the policy's `queue.fsync`: `os_crash_safe` (synchronous=NORMAL: a committed
write survives a crash of the process) or `per_write` (synchronous=FULL: it also survives
power loss, at several times the cost per commit).

Batched access (`put_many`, `delete_many`, `get_many`; `compare_and_set` for one row):
`Cache.set` costs several SQL statements per key (a SELECT, the INSERT or UPDATE, the cull
query) plus its own BEGIN and COMMIT, and every statement releases and retakes the GIL,
which under concurrent threads means waiting for it again. These helpers handle a whole
batch with one multi-row statement (per 1,000 rows) on the calling thread's diskcache
connection; a single statement outside a transaction is atomic and committed by itself
(SQLite autocommit), larger or combined writes run inside `cache.transact()`. Rows are
encoded by the cache's own `Disk` exactly as `Cache.set` stores them (same columns, no
expiry, no tag), so `get`, `iterkeys` and `len` see them, and diskcache's own triggers keep
its `count`/`size` settings in step row by row. They rely on diskcache's `Cache` table
schema (unchanged since diskcache 4; the pinned version is checked by
`tests/test_durable_cache.py`).

Opening checks the store before trusting it (`open_durable_cache` with `store=`): a
database file that exists but is empty (0 bytes), cannot be opened as SQLite, or fails
SQLite's `PRAGMA quick_check` (a truncated file, a garbage block) raises `StoreCorrupt`
naming the file and what to do, instead of being taken as an empty store. Nothing is
changed on disk when it refuses.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import diskcache

from router.errors import EdgerouteError
from router.policy import Durability

Value = bytes | int
"""What the batched writes store: bytes (payloads, records) or int (counters)."""

_SYNCHRONOUS: dict[str, int] = {"os_crash_safe": 1, "per_write": 2}
_COLUMNS = (
    "key, raw, store_time, expire_time, access_time, access_count, tag, size, mode, filename, value"
)
_ROW_MARKS = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_ON_CONFLICT = (
    " ON CONFLICT(key, raw) DO UPDATE SET store_time = excluded.store_time,"
    " expire_time = NULL, access_time = excluded.access_time, access_count = 0, tag = NULL,"
    " size = excluded.size, mode = excluded.mode, filename = NULL, value = excluded.value"
)
_CHUNK = 1000  # rows (or keys) per statement: 11,000 parameters, under SQLite's 32,766


DB_FILE = "cache.db"
"""The SQLite file diskcache keeps in a store's directory."""

STORE_LOSSES: dict[str, str] = {
    "queue": "every queued request not yet synced to the cloud",
    "results": "the stored results of queued requests (their ids will answer 404)",
    "budget": "today's recorded cloud spend: the budgets count from zero again",
}
"""What moving each store aside (`edgeroute edge serve --reset-store NAME`) loses."""


class StoreCorrupt(EdgerouteError):
    """A store's file exists but cannot be trusted (empty, not SQLite, failing SQLite's
    check, or holding a row that cannot be decoded where no row may be skipped). The node
    refuses to start rather than take it as empty; the message names the file and the two
    ways out (restore it, or an explicit reset that says what is lost)."""

    status = 503
    code = "store_corrupt"

    def __init__(self, store: str, path: Path, problem: str) -> None:
        lost = STORE_LOSSES.get(store, "its content")
        super().__init__(
            f"the {store} store {path} cannot be used: {problem}. Nothing was changed. "
            f"Restore {path.parent} from a backup, or start the node with "
            f"`edgeroute edge serve ... --reset-store {store}` to move it aside and start "
            f"empty (lost: {lost})",
            field=store,
        )
        self.store = store
        self.path = path


_CORRUPT = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB


def is_corruption(exc: sqlite3.Error) -> bool:
    """True when SQLite says the file itself is damaged or not a database; False for
    faults that pass (locked, cannot open, disk full, I/O), which are no reason to reset."""
    return getattr(exc, "sqlite_errorcode", None) in _CORRUPT


def check_store_file(directory: Path, store: str) -> None:
    """Refuse (`StoreCorrupt`) a store whose database file exists but cannot be trusted,
    before diskcache writes anything to it:

    - empty (0 bytes): SQLite would silently make a new, empty store of it and discard
      its write-ahead log (diskcache writes the file's first pages when it creates a
      store, so a store that ever held data is never 0 bytes);
    - not a database, or failing SQLite's `PRAGMA quick_check` (structure of every page
      and index, O(file size); run on a plain connection that creates nothing).

    A missing file is a new store. Other faults (permissions, locks, I/O) raise what
    sqlite3/OSError raise: the store's own error, never a reason to reset it."""
    db = directory / DB_FILE
    try:
        size = db.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        wal = directory / f"{DB_FILE}-wal"
        lost_log = " and its write-ahead log cannot be applied to it" if wal.exists() else ""
        raise StoreCorrupt(store, db, f"the file is empty (0 bytes){lost_log}")
    con = sqlite3.connect(db)
    try:
        rows = con.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        if not is_corruption(exc):
            raise
        raise StoreCorrupt(store, db, f"SQLite cannot read it ({exc})") from None
    finally:
        con.close()
    if [tuple(r) for r in rows] != [("ok",)]:
        first = str(rows[0][0]) if rows else "no answer"
        raise StoreCorrupt(store, db, f"SQLite's check failed ({first})")


def open_durable_cache(
    directory: str | Path,
    fsync: Durability = "os_crash_safe",
    *,
    store: str | None = None,
    secure_delete: bool = False,
) -> diskcache.Cache:
    """Open (creating if needed) the store at `directory` with the guarantees above.

    `secure_delete` makes SQLite overwrite deleted content with zeros in the database file
    (`PRAGMA secure_delete`, on every connection), for a store whose rows hold inputs.

    With `store` (its name: queue, results, budget) the file is checked before diskcache
    opens it (`check_store_file`): raises `StoreCorrupt` for a file that cannot be
    trusted, and leaves its content as it was. Thread-safe like any diskcache.Cache.
    Otherwise raises what diskcache/sqlite3 raise (OSError, sqlite3.Error); callers map
    it into their own EdgerouteError.
    """
    path = Path(directory)
    if store is not None:
        check_store_file(path, store)
    try:
        return _open(path, fsync, secure_delete)
    except sqlite3.DatabaseError as exc:
        if store is None or not is_corruption(exc):
            raise
        raise StoreCorrupt(store, path / DB_FILE, f"SQLite cannot open it ({exc})") from None


def _open(directory: Path, fsync: Durability, secure_delete: bool = False) -> diskcache.Cache:
    return diskcache.Cache(
        str(directory),
        eviction_policy="none",
        cull_limit=0,
        size_limit=2**62,
        sqlite_synchronous=_SYNCHRONOUS[fsync],
        sqlite_journal_mode="wal",
        disk_min_file_size=2**40,
        sqlite_secure_delete=int(secure_delete),
    )


def _atomic(cache: diskcache.Cache, statements: int) -> contextlib.AbstractContextManager[Any]:
    """What makes `statements` writes atomic: nothing for one statement (SQLite runs a
    statement outside a transaction as its own transaction: one commit, one GIL release),
    else a diskcache transaction (joined if this thread is already in one)."""
    in_txn = cache._txn_id == threading.get_ident()
    return contextlib.nullcontext() if statements <= 1 or in_txn else cache.transact()


def _rows(cache: diskcache.Cache, items: Iterable[tuple[str, Value]]) -> list[tuple[Any, ...]]:
    now = time.time()
    disk = cache.disk
    out: list[tuple[Any, ...]] = []
    for key, value in items:
        if not isinstance(key, str) or not isinstance(value, bytes | int):
            raise TypeError("batched cache writes take str keys and bytes or int values")
        db_key, raw = disk.put(key)
        size, mode, filename, db_value = disk.store(value, False, key=key)
        if filename is not None:  # never with disk_min_file_size=2**40; kept in SQLite
            raise ValueError("value too large to be kept inside SQLite")
        out.append((db_key, raw, now, None, now, 0, None, size, mode, None, db_value))
    return out


def put_many(cache: diskcache.Cache, items: Iterable[tuple[str, Value]]) -> None:
    """Insert or overwrite `(key, value)` rows (of duplicate keys in `items` the last
    wins), one statement per 1,000 rows. Atomic and committed when it returns: all rows or
    none; inside a `cache.transact()` of this thread it joins that transaction instead.
    Thread-safe like the cache. Raises sqlite3.Error / diskcache.Timeout as the cache does."""
    rows = _rows(cache, items)
    chunks = [rows[i : i + _CHUNK] for i in range(0, len(rows), _CHUNK)]
    with _atomic(cache, len(chunks)):
        con = cache._con
        for chunk in chunks:
            marks = ", ".join([_ROW_MARKS] * len(chunk))
            con.execute(
                f"INSERT INTO Cache({_COLUMNS}) VALUES {marks}{_ON_CONFLICT}",
                [v for row in chunk for v in row],
            )


def delete_many(cache: diskcache.Cache, keys: Iterable[str]) -> int:
    """Delete these keys (missing ones ignored), one statement per 1,000 keys; returns how
    many rows went. Atomic like `put_many` (joins this thread's `cache.transact()`)."""
    ks = list(dict.fromkeys(keys))
    chunks = [ks[i : i + _CHUNK] for i in range(0, len(ks), _CHUNK)]
    gone = 0
    with _atomic(cache, len(chunks)):
        con = cache._con
        for chunk in chunks:
            marks = ", ".join("?" * len(chunk))
            cursor = con.execute(f"DELETE FROM Cache WHERE raw = 1 AND key IN ({marks})", chunk)
            gone += int(cursor.rowcount)
    return gone


def compare_and_set(cache: diskcache.Cache, key: str, old: bytes, new: bytes) -> bool:
    """Overwrite the bytes value of `key` with `new` if it is exactly `old` now; True if it
    was written. One UPDATE statement: atomic against every writer of the directory (other
    processes included) and committed when it returns; inside a `cache.transact()` of this
    thread it joins that transaction instead. A missing key is never written (False).
    Raises sqlite3.Error / diskcache.Timeout as the cache does."""
    db_key, raw = cache.disk.put(key)
    size, mode, _, db_new = cache.disk.store(new, False, key=key)
    _, _, _, db_old = cache.disk.store(old, False, key=key)
    now = time.time()
    cursor = cache._con.execute(
        "UPDATE Cache SET value = ?, size = ?, mode = ?, store_time = ?, access_time = ?"
        " WHERE key = ? AND raw = ? AND mode = ? AND value = ?",
        (db_new, size, mode, now, now, db_key, raw, mode, db_old),
    )
    return int(cursor.rowcount) == 1


def get_many(cache: diskcache.Cache, keys: Sequence[str]) -> dict[str, bytes]:
    """The bytes values of those `keys` that exist (one SELECT per 1,000 keys), key -> value.
    Reads only: may run in or outside a transaction (WAL readers never block writers)."""
    out: dict[str, bytes] = {}
    sql = cache._sql
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        marks = ", ".join("?" * len(chunk))
        rows = sql(
            f"SELECT key, mode, filename, value FROM Cache WHERE raw = 1 AND key IN ({marks})"
            " AND (expire_time IS NULL OR expire_time > ?)",
            [*chunk, time.time()],
        ).fetchall()
        for key, mode, filename, value in rows:
            data = cache.disk.fetch(mode, filename, value, False)
            if isinstance(data, bytes):
                out[key] = data
    return out


def truncate_log(cache: diskcache.Cache, log: Any) -> None:
    """Checkpoint the write-ahead log into the file and truncate it (`PRAGMA
    wal_checkpoint(TRUNCATE)`). A failure or a busy answer (a reader still holds old
    frames) is logged on `log` (`wal_not_truncated`), never raised."""
    try:
        ((busy, _, _),) = cache._sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except Exception as exc:
        log.warning("wal_not_truncated", reason=type(exc).__name__)
        return
    if busy:
        log.info("wal_not_truncated", reason="busy")
