"""The data dir writer lock: one process at a time, named in the refusal, freed by the
kernel when its holder dies (kill -9), re-entrant within a process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_node.storage.data_dir_lock import DataDirBusy, exclusive, hold, release

REPO = Path(__file__).resolve().parents[1]
_ENV = {**os.environ, "PYTHONPATH": str(REPO)}

_HOLDER = textwrap.dedent(
    """
    import sys
    from edge_node.storage.data_dir_lock import hold
    hold(sys.argv[1], "edge node")
    print("held", flush=True)
    sys.stdin.read()  # hold it until the test kills this process (or its stdin closes)
    """
)

_TRY = textwrap.dedent(
    """
    import sys
    from edge_node.storage.data_dir_lock import DataDirBusy, hold
    try:
        hold(sys.argv[1], "queue drain")
    except DataDirBusy as exc:
        print(exc.message)
        sys.exit(3)
    print("got it")
    """
)


def _try_other_process(data_dir: Path) -> tuple[int, str]:
    out = subprocess.run(
        [sys.executable, "-c", _TRY, str(data_dir)],
        cwd=REPO,
        env=_ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.returncode, out.stdout.strip()


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding tmp_path's lock as an "edge node"; killed at teardown."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path)],
        cwd=REPO,
        env=_ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def test_second_process_is_refused_until_the_holder_is_killed(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    """While a process holds the lock, others (and this one) get DataDirBusy naming it;
    after kill -9 of the holder the lock is free at once."""
    rc, msg = _try_other_process(tmp_path)
    assert rc == 3 and f"edge node (pid {holder.pid})" in msg
    with pytest.raises(DataDirBusy, match="edge node"):
        hold(tmp_path, "queue purge")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(10)
    assert _try_other_process(tmp_path) == (0, "got it")


def test_reentrant_within_a_process(tmp_path: Path) -> None:
    """Two holds in one process need two releases before another process can lock."""
    hold(tmp_path, "edge node")
    with exclusive(tmp_path, "queue drain"):  # same process: no self-deadlock
        pass
    assert _try_other_process(tmp_path)[0] == 3
    release(tmp_path)
    assert _try_other_process(tmp_path) == (0, "got it")
    release(tmp_path)  # not held any more: a no-op
