"""Starting and stopping edgeroute's own server processes (demo, tests, benchmarks).

Every process is started in its own session so it and its children can be stopped by
pid; `stop` sends SIGTERM, waits, then SIGKILLs what is left. Servers bind 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def edgeroute_cmd(*args: str) -> list[str]:
    """argv running the `edgeroute` CLI with this interpreter."""
    return [sys.executable, "-m", "edgeroute.cli", *args]


def start(
    argv: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` in a new session (in `cwd`, default: this process's), stdout+stderr
    appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - owned by the child process
    full_env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    try:
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
        )
    finally:
        log.close()


def wait_http(
    url: str,
    proc: subprocess.Popen[bytes] | None = None,
    timeout_s: float = 120.0,
    log_path: Path | None = None,
    progress: Callable[[float], None] | None = None,
    progress_every_s: float = 5.0,
) -> None:
    """Poll `url` until it answers 200; raise RuntimeError (with the log's tail) on timeout
    or if `proc` exits first. `progress(elapsed_s)` is called about every
    `progress_every_s` seconds while waiting."""
    started = time.monotonic()
    deadline = started + timeout_s
    next_report = started + progress_every_s
    while time.monotonic() < deadline:
        if progress is not None and time.monotonic() >= next_report:
            progress(time.monotonic() - started)
            next_report += progress_every_s
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process exited with {proc.returncode} before {url} was ready" + _tail(log_path)
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f}s" + _tail(log_path))


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 30.0, *, group: bool = True) -> int:
    """SIGTERM the process group (or, with `group=False`, the process alone, so it can stop
    its children in order), wait up to `timeout_s`, then SIGKILL the group. Returns the
    code. With `group=False` the group is SIGKILLed after the process exits too, so
    nothing it started outlives it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            kill(proc)
    if not group:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group at once (a crash, as `kill -9` would)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _tail(log_path: Path | None, lines: int = 30) -> str:
    if log_path is None or not log_path.exists():
        return ""
    text = log_path.read_text(errors="replace").splitlines()[-lines:]
    return "\n--- log tail ---\n" + "\n".join(text)
