"""One way to open the node's on-disk stores (queue, results, budget) with diskcache.

The guarantees, the same for every store: nothing is ever evicted (a plain
`diskcache.Cache` evicts by default), SQLite runs in WAL mode, every value stays inside
SQLite (diskcache does not fsync the side files it uses for large values), and the commit
durability is the policy's `queue.fsync`: `os_crash_safe` (synchronous=NORMAL: a committed
write survives a crash of the process) or `per_write` (synchronous=FULL: it also survives
power loss, at several times the cost per commit).
"""

from __future__ import annotations

from pathlib import Path

import diskcache

from router.policy import Durability

_SYNCHRONOUS: dict[str, int] = {"os_crash_safe": 1, "per_write": 2}


def open_durable_cache(
    directory: str | Path, fsync: Durability = "os_crash_safe"
) -> diskcache.Cache:
    """Open (creating if needed) the store at `directory` with the guarantees above.

    Thread-safe like any diskcache.Cache. Raises what diskcache/sqlite3 raise (OSError,
    sqlite3.Error); callers map it into their own EdgerouteError.
    """
    return diskcache.Cache(
        str(directory),
        eviction_policy="none",
        cull_limit=0,
        size_limit=2**62,
        sqlite_synchronous=_SYNCHRONOUS[fsync],
        sqlite_journal_mode="wal",
        disk_min_file_size=2**40,
    )
