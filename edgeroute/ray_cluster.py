"""A local Ray cluster's processes found by its temp dir, stopped by pid.

`ray stop` stops every Ray process of the machine (other users' clusters, a test
session's own Ray). A cluster started with `ray start --temp-dir=DIR` names DIR on the
command line of its root processes; everything else it runs descends from them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path


def cluster_pids(temp_dir: Path) -> set[int]:
    """Pids of every live (non-zombie) process whose command line names `temp_dir`, and of
    their descendants; never this process. Reads /proc (Linux)."""
    marker = str(temp_dir).encode()
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
        if pid != os.getpid() and _names(cmdline, marker):
            roots.add(pid)
    found = set(roots)
    frontier = roots
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def _names(cmdline: bytes, marker: bytes) -> bool:
    """Whether an argument is DIR or `--opt=DIR`, or holds a path under DIR."""
    for arg in cmdline.split(b"\0"):
        if arg == marker or arg.endswith(b"=" + marker) or marker + b"/" in arg:
            return True
    return False


def stop_cluster(
    temp_dir: Path,
    *,
    grace_s: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[set[int], set[int]]:
    """SIGTERM every process of the cluster in `temp_dir`, SIGKILL those still alive after
    `grace_s`, and wait (up to `grace_s` more) for them to go. Returns (pids signalled,
    pids still alive at the end: empty when the cluster is gone)."""
    pids = cluster_pids(temp_dir)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for sig in (signal.SIGKILL, None):
        end = clock() + grace_s
        while cluster_pids(temp_dir) & pids and clock() < end:
            sleep(0.1)
        left = cluster_pids(temp_dir) & pids
        if sig is None or not left:
            return pids, left
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    return pids, cluster_pids(temp_dir) & pids  # pragma: no cover - the loop returns
