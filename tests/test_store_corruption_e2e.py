"""The corruption table: a real node is killed (-9) holding queued items, stored results and
a budget ledger; each store is then damaged one way and the node restarted. Each case
either refuses cleanly (exit 2, the file named, no traceback) or starts with the bad
record quarantined and every other acknowledged item drained to done. Never a silent
loss, never a 500. Real node processes, a real Ray Serve cloud behind a fault proxy."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgeroute import processes
from edgeroute.netproxy import ThreadedFaultProxy
from tests.edge_fixtures import CLOUD_TOKEN, EdgeNode
from tests.offline_support import fetch_results, offline_policy, send_all, wait_until

pytestmark = pytest.mark.ray

DB = "cache.db"


def _sql(db: Path, statement: str, params: tuple[object, ...] = ()) -> None:
    """Run one statement on a store's SQLite file (as a bad disk or hand would)."""
    con = sqlite3.connect(db)
    try:
        cur = con.execute(statement, params)
        assert statement.startswith("PRAGMA") or cur.rowcount == 1, statement
        con.commit()
    finally:
        con.close()


def _checkpointed(db: Path) -> Path:
    """Fold the write-ahead log left by the kill into the file, so damage hits live pages."""
    _sql(db, "PRAGMA wal_checkpoint(TRUNCATE)")
    return db


def _queue_key(db: Path, rid: str) -> str:
    """The queue key of request `rid`."""
    con = sqlite3.connect(db)
    try:
        (key,) = con.execute("SELECT key FROM Cache WHERE key LIKE ?", (f"q:%:{rid}",)).fetchone()
    finally:
        con.close()
    return str(key)


def _truncate(db: Path, size: int | None = None) -> None:
    """Cut the file to `size` bytes (default: half)."""
    with db.open("r+b") as f:
        f.truncate(db.stat().st_size // 2 if size is None else size)


def _garbage(db: Path) -> None:
    """Overwrite 8 KiB after the first page with random bytes."""
    with db.open("r+b") as f:
        f.seek(4096)
        f.write(os.urandom(8192))


@dataclass(frozen=True)
class Case:
    """One damage: what it does to the crashed data dir, and how the node must react."""

    name: str
    damage: Callable[[Path, str], None]  # (data dir, run prefix)
    refuses: str | None = None  # the file (under the data dir) the refusal must name
    quarantined: str | None = None  # the id that must answer `quarantined`
    reset: str | None = None  # after the refusal, restart with --reset-store this


CASES = [
    Case(
        "queue: undecodable row",
        lambda d, p: _sql(
            d / "queue" / DB,
            "UPDATE Cache SET value = ? WHERE key = ?",
            (b"\xffgarbage", _queue_key(d / "queue" / DB, f"{p}second-3")),
        ),
        quarantined="second-3",
    ),
    Case(
        "queue: malformed key",
        lambda d, p: _sql(
            d / "queue" / DB,
            "UPDATE Cache SET key = 'q:broken' WHERE key = ?",
            (_queue_key(d / "queue" / DB, f"{p}second-4"),),
        ),
    ),
    Case(
        "queue: 0-byte file", lambda d, p: _truncate(d / "queue" / DB, 0), refuses="queue/cache.db"
    ),
    Case(
        "queue: truncated file",
        lambda d, p: _truncate(_checkpointed(d / "queue" / DB)),
        refuses="queue/cache.db",
    ),
    Case(
        "queue: garbage block",
        lambda d, p: _garbage(_checkpointed(d / "queue" / DB)),
        refuses="queue/cache.db",
    ),
    Case(
        "results: undecodable row",
        lambda d, p: _sql(
            d / "results" / DB, "UPDATE Cache SET value = ? WHERE key = ?", (b"{", f"r:{p}first-2")
        ),
        quarantined="first-2",
    ),
    Case(
        "results: 0-byte file",
        lambda d, p: _truncate(d / "results" / DB, 0),
        refuses="results/cache.db",
    ),
    Case(
        "results: garbage block",
        lambda d, p: _garbage(_checkpointed(d / "results" / DB)),
        refuses="results/cache.db",
    ),
    Case(
        "budget: undecodable ledger row",
        lambda d, p: _sql(
            d / "budget" / DB, "UPDATE Cache SET value = ? WHERE key = 'budget_ledger'", (b"[",)
        ),
        refuses="budget/cache.db",
    ),
    Case(
        "budget: truncated file",
        lambda d, p: _truncate(_checkpointed(d / "budget" / DB)),
        refuses="budget/cache.db",
    ),
    Case(
        "budget: 0-byte file, then an explicit reset",
        lambda d, p: _truncate(d / "budget" / DB, 0),
        refuses="budget/cache.db",
        reset="budget",
    ),
    Case(
        "models: corrupted state.json",
        lambda d, p: (
            (d / "models" / "later").mkdir(parents=True, exist_ok=True)
            or (d / "models" / "later" / "state.json").write_bytes(b'{"task": "later", "curr')
        ),
        refuses="models/later/state.json",
    ),
]


def _start(policy: Path, data: Path, url: str, log: Path, *extra: str) -> tuple[EdgeNode, bool]:
    """Start a node; (node, True) once it is ready, (node, False) if it exited first."""
    port = processes.free_port()
    cmd = processes.edgeroute_cmd(
        "edge", "serve", "--policy", str(policy), "--data-dir", str(data),
        "--port", str(port), "--cloud-url", url, "--log-level", "warning", *extra,
    )  # fmt: skip
    proc = processes.start(cmd, log, env={"EDGEROUTE_TEST_TOKEN": CLOUD_TOKEN})
    node = EdgeNode(proc, f"http://127.0.0.1:{port}", data, log, policy)
    try:
        processes.wait_http(f"{node.url}/readyz", proc, 60, log)
    except RuntimeError:
        if proc.poll() is None:
            raise
        return node, False
    return node, True


def _depth(node: EdgeNode) -> int:
    """The node's queue depth from /v1/status."""
    return int(node.status()["queue"]["depth"])  # type: ignore[index]


def _check_started(case: Case, node: EdgeNode, prefix: str, ids: list[str]) -> list[str]:
    """The problems of a case whose node must start: drain, then every id's state (the
    results stored before the crash included) and the quarantine counts."""
    problems: list[str] = []
    if not wait_until(lambda: _depth(node) == 0, 60):
        return [f"queue did not drain (depth {_depth(node)})"]
    results = asyncio.run(fetch_results(node.url, ids))
    for rid, body in results.items():
        want = "quarantined" if case.quarantined and rid == prefix + case.quarantined else "done"
        if body.get("status") != want:
            problems.append(f"{rid}: {body} (want {want})")
    status = node.status()
    counted = (status["queue"]["quarantined"], status["results"]["quarantined"])  # type: ignore[index]
    want = {None: (0, 0), "second": (1, 0), "first": (0, 1)}[
        case.quarantined.split("-")[0] if case.quarantined else None
    ]
    if counted != want:
        problems.append(f"quarantined (queue, results) = {counted}, want {want}")
    return problems


def test_each_damaged_store_refuses_cleanly_or_quarantines_and_drains(
    proxy: ThreadedFaultProxy,
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    """Every row of the table: a clean refusal naming the file (exit 2, no traceback), or
    a start with the bad record quarantined and every other acknowledged item done."""
    x, _ = digits_split
    prefix = f"c{uuid.uuid4().hex[:8]}-"
    first = [f"{prefix}first-{i}" for i in range(6)]
    second = [f"{prefix}second-{i}" for i in range(10)]
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        offline_policy(
            demo_bundles_dir / "edge" / "digits",
            cost="price_per_call: 0.01\n  daily_calls: 100000",
        )
    )
    url = f"http://127.0.0.1:{proxy.port}"
    crashed = tmp_path / "crashed"

    proxy.set_mode("down")
    node, ready = _start(policy, crashed, url, tmp_path / "setup.log")
    assert ready
    try:
        bodies = [
            {"task": "later", "inputs": x[i].tolist(), "request_id": r} for i, r in enumerate(first)
        ]
        asyncio.run(send_all(node.url, bodies, concurrency=4))
        proxy.set_mode("pass")
        assert wait_until(lambda: _depth(node) == 0, 60)
        proxy.set_mode("down")
        bodies = [
            {"task": "later", "inputs": x[i].tolist(), "request_id": r}
            for i, r in enumerate(second)
        ]
        answers = asyncio.run(send_all(node.url, bodies, concurrency=4))
        assert all(a is not None and a.status_code == 200 for a in answers)
    finally:
        processes.kill(node.proc)

    table: dict[str, list[str]] = {}
    for n, case in enumerate(CASES):
        data = tmp_path / f"case-{n}"
        shutil.copytree(crashed, data)
        case.damage(data, prefix)
        proxy.set_mode("pass")
        log = tmp_path / f"case-{n}.log"
        node, ready = _start(policy, data, url, log)
        problems: list[str] = []
        try:
            if case.refuses is None:
                problems = ["refused to start"] if not ready else _check_started(
                    case, node, prefix, first + second
                )  # fmt: skip
            else:
                text = log.read_text()
                if ready:
                    problems.append("started instead of refusing")
                elif (
                    node.proc.returncode != 2
                    or "Traceback" in text
                    or str(data / case.refuses) not in text
                ):
                    problems.append(f"exit {node.proc.returncode}: {text[-400:]!r}")
        finally:
            processes.stop(node.proc, timeout_s=10)
        if case.reset is not None and not problems:
            node, ready = _start(
                policy, data, url, tmp_path / f"case-{n}-reset.log", "--reset-store", case.reset
            )
            try:
                said = (tmp_path / f"case-{n}-reset.log").read_text()
                if not ready or "lost:" not in said:
                    problems.append(f"reset did not start cleanly: {said[-400:]!r}")
                else:
                    problems += _check_started(case, node, prefix, first + second)
            finally:
                processes.stop(node.proc, timeout_s=10)
        table[case.name] = problems
    failing = {name: p for name, p in table.items() if p}
    assert not failing, failing
    assert len(table) == len(CASES)
    print("\n".join(f"ok  {name}" for name in table))
