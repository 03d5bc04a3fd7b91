"""A local Ray cluster's processes found by its temp dir, stopped by pid.

`ray stop` stops every Ray process of the machine (other users' clusters, a test
session's own Ray). A cluster started with `ray start --temp-dir=DIR` passes DIR, or a
folder under it (its session and log folders), as the value of a `--option=VALUE`
argument to the processes it starts; everything else it runs descends from them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from router.errors import EdgerouteError


def cluster_pids(temp_dir: Path) -> set[int]:
    """Pids of every live (non-zombie) process with a `--option=VALUE` argument whose
    VALUE is `temp_dir` or a path under it, and of their descendants; never this process
    or its ancestors (a wrapper such as `timeout ... --temp-dir=DIR`). Reads /proc."""
    root = os.path.normpath(temp_dir)
    parents: dict[int, int] = {}
    roots: set[int] = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes()
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z":
            continue
        pid = int(proc.name)
        parents[pid] = int(fields[1])
        if _names(cmdline, root):
            roots.add(pid)
    found = set(roots)
    frontier = roots
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found - _self_and_ancestors(parents)


def _names(cmdline: bytes, root: str) -> bool:
    """Whether an argument is `--option=VALUE` with VALUE `root` or a path under it."""
    for arg in cmdline.split(b"\0"):
        if arg.startswith(b"--") and b"=" in arg:
            value = os.path.normpath(arg.split(b"=", 1)[1].decode(errors="replace"))
            if value == root or value.startswith(root + os.sep):
                return True
    return False


def _self_and_ancestors(parents: dict[int, int]) -> set[int]:
    chain, pid = set(), os.getpid()
    while pid > 0 and pid not in chain:
        chain.add(pid)
        pid = parents.get(pid, 0)
    return chain


def stop_cluster(
    temp_dir: Path,
    *,
    grace_s: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[set[int], set[int]]:
    """SIGTERM every process of the cluster in `temp_dir`, SIGKILL those still alive after
    `grace_s`, and wait (up to `grace_s` more) for them to go. Returns (pids signalled,
    pids still alive at the end: empty when the cluster is gone). Raises EdgerouteError if
    a process may not be signalled by this user."""
    pids = cluster_pids(temp_dir)
    _signal(pids, signal.SIGTERM)
    for sig in (signal.SIGKILL, None):
        end = clock() + grace_s
        while cluster_pids(temp_dir) & pids and clock() < end:
            sleep(0.1)
        left = cluster_pids(temp_dir) & pids
        if sig is None or not left:
            return pids, left
        _signal(left, sig)
    return pids, cluster_pids(temp_dir) & pids  # pragma: no cover - the loop returns


def _signal(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        except PermissionError:
            raise EdgerouteError(
                f"not allowed to stop process {pid} of the cluster (run as its owner)"
            ) from None
