"""One writer process per edge node data dir: an exclusive lock on `DIR/writer.lock`.

The node keeps its queue index in memory, so a second process writing the same data dir
(`edgeroute queue drain|purge` while the node runs, or two nodes) would corrupt the node's
view of its queue. Whoever writes holds this lock: the node for its whole life (`hold`),
the CLI's `drain`/`purge` for their run (`exclusive`).

The lock is a POSIX `flock` on an open file, so the kernel drops it when its process exits
in any way (kill -9 included): a stale file never blocks anyone. The file records the
holder's pid and role, for the refusal message only. Within one process the lock is
re-entrant (a process never locks itself out, e.g. an app rebuilt on the same dir).
Thread-safe. Raises `DataDirBusy` when another process holds the lock and
`DataDirLockError` when the lock file cannot be opened.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from router.errors import EdgerouteError

LOCK_NAME = "writer.lock"

_held: dict[Path, tuple[int, int]] = {}  # resolved dir -> (fd, hold count) in this process
_guard = threading.Lock()


class DataDirLockError(EdgerouteError):
    """The data dir's lock file cannot be opened (missing dir, permissions...)."""

    code = "data_dir_lock_error"


class DataDirBusy(DataDirLockError):
    """Another process (a running edge node, or a CLI drain/purge) writes this data dir."""

    status = 409
    code = "data_dir_busy"


def _holder_text(fd: int) -> str:
    with contextlib.suppress(OSError):
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        if text:
            return text
    return "another process"


def hold(data_dir: str | Path, role: str) -> None:
    """Take the lock of `data_dir` (which must exist) for `role` ("edge node", "queue
    drain"...), until `release` or the end of the process. Re-entrant in one process (each
    `hold` needs one `release`). Raises `DataDirBusy` naming the holder if another process
    has it, without waiting."""
    key = Path(data_dir).resolve()
    with _guard:
        if key in _held:
            fd, count = _held[key]
            _held[key] = (fd, count + 1)
            return
        try:
            fd = os.open(key / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DataDirLockError(f"cannot open the lock of {key}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            who = _holder_text(fd)
            os.close(fd)
            raise DataDirBusy(
                f"{key} is in use by {who}; stop it first (or run this while it is stopped)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{role} (pid {os.getpid()})\n".encode(), 0)
        _held[key] = (fd, 1)


def release(data_dir: str | Path) -> None:
    """Undo one `hold` of this process; the lock goes when the last one is undone.
    Releasing a dir this process does not hold does nothing."""
    key = Path(data_dir).resolve()
    with _guard:
        if key not in _held:
            return
        fd, count = _held[key]
        if count > 1:
            _held[key] = (fd, count - 1)
            return
        del _held[key]
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the only descriptor drops the flock


@contextlib.contextmanager
def exclusive(data_dir: str | Path, role: str) -> Iterator[None]:
    """`hold` for the duration of a `with` block (CLI commands that write)."""
    hold(data_dir, role)
    try:
        yield
    finally:
        release(data_dir)
