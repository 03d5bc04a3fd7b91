"""Helpers to run a separate, real local Ray cluster from a test (`ray start --head` on
127.0.0.1 with its own temp dir and ports) and to stop exactly its processes by pid.

`ray stop` is never used: it stops every Ray process of the machine, including the test
session's own Ray and other users' clusters.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from edgeroute.processes import free_port
from tests.waiting import holds_within

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class LocalCluster:
    """A running head node: its GCS address, temp dir and the environment to talk to it."""

    address: str
    temp_dir: Path
    env: dict[str, str]


def cluster_env() -> dict[str, str]:
    """Environment for the cluster's commands: token auth with a fresh random token, no
    usage stats, and no RAY_ADDRESS inherited from the test session."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_USAGE_STATS_ENABLED="0",
    )
    return env


def start_head(temp_dir: Path, *, num_cpus: int = 2, timeout_s: float = 90.0) -> LocalCluster:
    """`ray start --head` on 127.0.0.1, dashboard off, every port chosen free.

    Raises subprocess.CalledProcessError / TimeoutExpired when Ray does not start.
    """
    env = cluster_env()
    port = free_port()
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--num-cpus={num_cpus}",
        f"--temp-dir={temp_dir}",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        "--object-store-memory=134217728",
    ]
    subprocess.run(cmd, env=env, check=True, timeout=timeout_s, capture_output=True, cwd=temp_dir)
    return LocalCluster(f"127.0.0.1:{port}", temp_dir, env)


def cluster_pids(temp_dir: Path) -> set[int]:
    """Pids of every live process whose command line names `temp_dir`, and their children."""
    marker = str(temp_dir).encode()
    parents: dict[int, int] = {}
    roots: set[int] = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes()
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(proc.name)
        if fields[0] == "Z":
            continue
        parents[pid] = int(fields[1])
        if marker in cmdline and pid != os.getpid():
            roots.add(pid)
    found = set(roots)
    frontier = roots
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def stop_cluster(temp_dir: Path, timeout_s: float = 15.0) -> set[int]:
    """SIGKILL every process of the cluster in `temp_dir`; returns the pids that were killed
    and still exist as non-zombies after `timeout_s` (empty when all are gone)."""
    pids = cluster_pids(temp_dir)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    holds_within(lambda: not (cluster_pids(temp_dir) & pids), timeout_s, 0.2)
    return cluster_pids(temp_dir) & pids
