"""DurableQueue and ResultStore on real diskcache directories."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edge_node.storage.queue_store import DurableQueue
from edge_node.storage.queued_item import QueuedItem
from edge_node.storage.result_store import ResultStore, ResultStoreError
from router.errors import QueueFull, RequestIdConflict, RequestTooLarge
from router.policy import QueueSettings

REPO = Path(__file__).resolve().parents[1]


def item(rid: str, *, task: str = "iris", at: float = 1000.0, n_inputs: int = 4) -> QueuedItem:
    return QueuedItem(
        request_id=rid,
        task=task,
        cloud_task=f"{task}-cloud",
        inputs=[0.5] * n_inputs,
        candidates=["a", "b"],
        edge_label="a",
        edge_score=0.4,
        edge_candidates=[("a", 0.4), ("b", 0.3)],
        model_version="v1",
        enqueued_at=at,
        reason="below_threshold",
    )


def settings(**kw: object) -> QueueSettings:
    base: dict[str, object] = {"max_items": 1000, "max_bytes": 1 << 20, "on_full": "reject"}
    base.update(kw)
    return QueueSettings.model_validate(base)


def test_put_then_oldest_returns_items_oldest_first(tmp_path: Path) -> None:
    """Items come back in insertion order, with every field intact."""
    q = DurableQueue(tmp_path, settings())
    for i in range(5):
        q.put(item(f"r{i}", at=1000.0 + i))
    got = q.oldest(3)
    assert [g.request_id for g in got] == ["r0", "r1", "r2"]
    assert got[0] == item("r0", at=1000.0)
    assert q.depth == 5
    q.close()


def test_oldest_filters_by_task(tmp_path: Path) -> None:
    """oldest(n, task) skips items of other tasks but keeps their relative order."""
    q = DurableQueue(tmp_path, settings())
    for i in range(6):
        q.put(item(f"r{i}", task="iris" if i % 2 else "digits"))
    assert [g.request_id for g in q.oldest(10, task="iris")] == ["r1", "r3", "r5"]
    q.close()


def test_oldest_and_expired_skip_excluded_ids(tmp_path: Path) -> None:
    """oldest/expired with `exclude` leave those items out (still queued) and fill the
    batch with the next ones in order."""
    q = DurableQueue(tmp_path, settings(ttl_s=60))
    for i in range(6):
        q.put(item(f"r{i}", at=1000.0 + i))
    busy = {"r0", "r1", "r3"}
    assert [g.request_id for g in q.oldest(2, exclude=busy)] == ["r2", "r4"]
    assert [g.request_id for g in q.expired(1063.5, exclude=busy)] == ["r2"]
    assert [g.request_id for g in q.oldest(3)] == ["r0", "r1", "r2"] and q.depth == 6
    q.close()


def test_put_is_idempotent_per_request_id(tmp_path: Path) -> None:
    """A second put of a queued request_id changes neither depth nor bytes."""
    q = DurableQueue(tmp_path, settings())
    q.put(item("r1"))
    before = (q.depth, q.bytes)
    assert q.put(item("r1", at=2000.0)) == []
    assert (q.depth, q.bytes) == before
    assert q.oldest(5)[0].enqueued_at == 1000.0
    assert q.get("r1") == item("r1") and q.get("nope") is None and "r1" in q
    q.close()


def test_put_refuses_a_queued_request_id_for_other_inputs(tmp_path: Path) -> None:
    """Another request under a queued id raises RequestIdConflict, also inside one group and
    after a restart, and the queued item is left as it was."""
    q = DurableQueue(tmp_path, settings())
    q.put(item("r1"))
    with pytest.raises(RequestIdConflict):
        q.put(item("r1", n_inputs=5))
    out = q.put_many([item("r2"), item("r2", task="other")])
    assert out[0] == [] and isinstance(out[1], RequestIdConflict)
    q.close()
    q = DurableQueue(tmp_path, settings())
    with pytest.raises(RequestIdConflict):
        q.put(item("r1", task="other"))
    assert q.put(item("r1")) == [] and q.depth == 2 and q.get("r1") == item("r1")
    q.close()


def test_restart_keeps_items_order_and_byte_count(tmp_path: Path) -> None:
    """Reopening the directory restores order, depth, bytes, attempts; new items go last."""
    q = DurableQueue(tmp_path, settings())
    for i in range(20):
        q.put(item(f"r{i:02d}", at=1000.0 + i, n_inputs=1 + i))
    q.remove(["r03", "r07"])
    q.record_failure("r05", "boom")
    depth, size = q.depth, q.bytes
    q.close()

    q2 = DurableQueue(tmp_path, settings())
    assert (q2.depth, q2.bytes) == (depth, size)
    assert size > 0
    order = [g.request_id for g in q2.oldest(100)]
    assert order == [f"r{i:02d}" for i in range(20) if i not in (3, 7)]
    assert next(g for g in q2.oldest(100) if g.request_id == "r05").attempts == 1
    q2.put(item("new", at=5000.0))
    assert q2.oldest(100)[-1].request_id == "new"
    q2.close()


def test_reject_when_full_by_items_and_by_bytes(tmp_path: Path) -> None:
    """on_full=reject raises QueueFull with a retry hint and keeps the queue unchanged."""
    q = DurableQueue(tmp_path / "a", settings(max_items=3), retry_after_s=2.5)
    for i in range(3):
        q.put(item(f"r{i}"))
    with pytest.raises(QueueFull) as err:
        q.put(item("r3"))
    assert err.value.retry_after_s == 2.5
    assert [g.request_id for g in q.oldest(10)] == ["r0", "r1", "r2"]
    q.close()

    one = len(item("x").model_dump_json())
    qb = DurableQueue(tmp_path / "b", settings(max_bytes=max(1024, one * 2 + 10)))
    accepted = 0
    with pytest.raises(QueueFull):
        for i in range(100):
            qb.put(item(f"r{i}"))
            accepted += 1
    assert qb.depth == accepted and qb.bytes <= qb._settings.max_bytes
    qb.close()


def test_drop_oldest_returns_dropped_ids(tmp_path: Path) -> None:
    """on_full=drop_oldest evicts the oldest items (reported) to make room."""
    q = DurableQueue(tmp_path, settings(max_items=3, on_full="drop_oldest"))
    for i in range(3):
        assert q.put(item(f"r{i}")) == []
    assert q.put(item("r3")) == ["r0"]
    assert [g.request_id for g in q.oldest(10)] == ["r1", "r2", "r3"]
    q.close()
    q2 = DurableQueue(tmp_path, settings(max_items=3, on_full="drop_oldest"))
    assert [g.request_id for g in q2.oldest(10)] == ["r1", "r2", "r3"]
    q2.close()


def test_item_larger_than_max_bytes_is_rejected(tmp_path: Path) -> None:
    """An item that can never fit raises RequestTooLarge, even with drop_oldest."""
    q = DurableQueue(tmp_path, settings(max_bytes=1024, on_full="drop_oldest"))
    q.put(item("small"))
    with pytest.raises(RequestTooLarge):
        q.put(item("big", n_inputs=1000))
    assert q.depth == 1
    q.close()


def test_ttl_expiry_and_oldest_age(tmp_path: Path) -> None:
    """Items older than ttl_s are listed by expired and then removed; young ones stay."""
    q = DurableQueue(tmp_path, settings(ttl_s=60))
    q.put(item("old", at=1000.0))
    q.put(item("young", at=1050.0))
    assert q.oldest_age(1070.0) == 70.0
    assert q.expired(1070.0)[0].request_id == "old" and q.depth == 2
    assert q.remove(i.request_id for i in q.expired(1070.0)) == 1
    assert [g.request_id for g in q.oldest(5)] == ["young"]
    assert q.oldest_age(1070.0) == 20.0
    q.close()


def test_record_failure_counts_attempts(tmp_path: Path) -> None:
    """record_failure increments attempts and keeps a truncated last_error."""
    q = DurableQueue(tmp_path, settings())
    q.put(item("r1"))
    assert q.record_failure("r1", "x" * 2000) == 1
    assert q.record_failure("r1", "second") == 2
    got = q.oldest(1)[0]
    assert (got.attempts, got.last_error) == (2, "second")
    assert q.record_failure("unknown", "e") == 0
    q.close()


def test_concurrent_puts_from_threads(tmp_path: Path) -> None:
    """Puts from several threads all land, each once, with a consistent byte count."""
    q = DurableQueue(tmp_path, settings())

    def worker(t: int) -> None:
        for i in range(25):
            q.put(item(f"t{t}-{i}"))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    ids = [g.request_id for g in q.oldest(1000)]
    assert len(ids) == len(set(ids)) == 100
    size = q.bytes
    q.close()
    assert DurableQueue(tmp_path, settings()).bytes == size


def test_group_commit_drops_its_own_items_when_full(tmp_path: Path) -> None:
    """One group of 4 puts into a drop_oldest queue of 2 (what concurrent puts make): the
    last two survive, each dropped id is reported once, and disk agrees after reopening."""
    s = settings(max_items=2, on_full="drop_oldest")
    q = DurableQueue(tmp_path, s)
    q.put(item("old"))
    group = [(it, it.model_dump_json().encode()) for it in (item(f"g{i}") for i in range(4))]
    outcomes = q._commit_group(group)
    assert outcomes == [[], ["old"], ["g0"], ["g1"]]
    assert [g.request_id for g in q.oldest(10)] == ["g2", "g3"]
    size = q.bytes
    q.close()
    q2 = DurableQueue(tmp_path, s)
    assert [g.request_id for g in q2.oldest(10)] == ["g2", "g3"] and q2.bytes == size
    assert q2._cache.check() == [] and len(q2._cache) == 2
    q2.close()


def test_many_concurrent_puts_share_commits(tmp_path: Path) -> None:
    """16 threads x 40 puts land once each, in far fewer commits than puts."""
    q = DurableQueue(tmp_path, settings())
    commits: list[int] = []
    real = q._group._commit

    def counting(values: Sequence[tuple[QueuedItem, bytes]]) -> Sequence[object]:
        commits.append(len(values))
        return real(values)

    q._group._commit = counting  # type: ignore[assignment]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: q.put(item(f"c{i}")), range(640)))
    assert q.depth == 640 and sum(commits) == 640
    assert len(commits) < 640
    q.close()
    q2 = DurableQueue(tmp_path, settings())
    assert sorted(g.request_id for g in q2.oldest(1000)) == sorted(f"c{i}" for i in range(640))
    q2.close()


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from edge_node.storage.queue_store import DurableQueue
    from edge_node.storage.queued_item import QueuedItem
    from router.policy import QueueSettings
    s = QueueSettings(max_items=100000, max_bytes=1 << 30, on_full="reject", fsync=sys.argv[2])
    q = DurableQueue(sys.argv[1], s)
    i = 0
    while True:
        q.put(QueuedItem(request_id=f"k{i}", task="iris", cloud_task="iris", inputs=[1.0] * 8,
              candidates=["a"], edge_label="a", edge_score=0.5, edge_candidates=[("a", 0.5)],
              model_version="v1", enqueued_at=1000.0 + i, reason="test"))
        sys.stdout.write(f"k{i}\\n")
        sys.stdout.flush()
        i += 1
    """
)


@pytest.mark.parametrize("fsync", ["os_crash_safe", "per_write"])
def test_acknowledged_items_survive_kill_9(tmp_path: Path, fsync: str) -> None:
    """Every put that returned before a SIGKILL is present, in order, after reopening."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, str(tmp_path), fsync],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    acked: list[str] = []
    try:
        while len(acked) < 150:
            line = proc.stdout.readline()
            assert line, "writer exited early"
            acked.append(line.strip())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    q = DurableQueue(tmp_path, settings(max_items=100000, max_bytes=1 << 30))
    found = [g.request_id for g in q.oldest(100000)]
    assert found[: len(acked)] == acked
    assert q.bytes > 0 and q.depth == len(found)
    q.close()


# --- result store ---------------------------------------------------------------------


class FakeClock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_result_store_status_transitions_and_counts(tmp_path: Path) -> None:
    """pending -> done keeps task and provisional answer; counts follow every transition."""
    rs = ResultStore(tmp_path, clock=FakeClock())
    rs.mark_pending("a", "iris", {"label": "x"})
    rs.mark_pending("b", "iris", {"label": "y"})
    rs.mark_pending("c", "iris", {"label": "z"})
    assert rs.counts() == {"pending": 3, "done": 0, "expired": 0, "failed": 0, "quarantined": 0}
    rs.put_done("a", {"label": "w", "score": 0.9})
    rs.put_expired("b", "ttl_expired")
    rs.put_failed("c", "cloud_rejected: nope")
    a = rs.get("a")
    assert a is not None
    assert (a["status"], a["task"], a["provisional"], a["result"]["label"]) == (
        "done",
        "iris",
        {"label": "x"},
        "w",
    )
    b = rs.get("b") or {}
    assert (b["status"], b["reason"]) == ("expired", "ttl_expired")
    assert (rs.get("c") or {})["error"] == "cloud_rejected: nope"
    assert rs.get("missing") is None
    assert rs.counts() == {"pending": 0, "done": 1, "expired": 1, "failed": 1, "quarantined": 0}
    rs.close()


def test_result_store_survives_restart(tmp_path: Path) -> None:
    """Reopening restores records and counts."""
    rs = ResultStore(tmp_path, "per_write", clock=FakeClock())
    rs.mark_pending("a", "iris", {})
    rs.put_done("b", {"task": "iris", "label": "l"})
    rs.close()
    rs2 = ResultStore(tmp_path, "per_write", clock=FakeClock())
    assert rs2.counts() == {"pending": 1, "done": 1, "expired": 0, "failed": 0, "quarantined": 0}
    assert (rs2.get("b") or {})["task"] == "iris"
    rs2.close()


def test_result_store_retention(tmp_path: Path) -> None:
    """Records vanish from get after retention_s and purge_expired deletes them."""
    clock = FakeClock()
    rs = ResultStore(tmp_path, retention_s=100, clock=clock)
    rs.mark_pending("old", "iris", {})
    clock.t += 60
    rs.mark_pending("young", "iris", {})
    clock.t += 50
    assert rs.get("old") is None and rs.get("young") is not None
    assert rs.purge_expired() == 1
    assert rs.counts()["pending"] == 1
    rs.close()
    assert ResultStore(tmp_path, retention_s=100, clock=clock).counts()["pending"] == 1


def test_put_done_many_is_one_write_with_put_done_semantics(tmp_path: Path) -> None:
    """put_done_many keeps each pending record's task and provisional answer, lets the last
    of a duplicated id win, counts once per id, and survives reopening."""
    rs = ResultStore(tmp_path, clock=FakeClock())
    rs.mark_pending("a", "iris", {"label": "x"})
    rs.put_done_many(
        [("a", {"label": "1"}), ("b", {"task": "iris", "label": "2"}), ("a", {"label": "3"})]
    )
    a = rs.get("a") or {}
    assert (a["status"], a["task"], a["provisional"], a["result"]) == (
        "done",
        "iris",
        {"label": "x"},
        {"label": "3"},
    )
    assert rs.counts() == {"pending": 0, "done": 2, "expired": 0, "failed": 0, "quarantined": 0}
    rs.close()
    rs2 = ResultStore(tmp_path, clock=FakeClock())
    assert rs2.counts()["done"] == 2 and (rs2.get("b") or {})["task"] == "iris"
    rs2.close()


def test_put_done_many_failure_writes_nothing(tmp_path: Path) -> None:
    """When the batch cannot be written, no record of it is stored and counts stay."""
    rs = ResultStore(tmp_path, clock=FakeClock())
    rs.mark_pending("a", "iris", {})
    with pytest.raises(ResultStoreError):
        rs.put_done_many([("a", {"label": "1"}), ("b", {"label": object()})])
    assert (rs.get("a") or {})["status"] == "pending" and rs.get("b") is None
    assert rs.counts() == {"pending": 1, "done": 0, "expired": 0, "failed": 0, "quarantined": 0}
    rs.close()


def test_put_many_gives_each_item_puts_outcome_and_is_durable(tmp_path: Path) -> None:
    """put_many returns, per item, what put would: accepted, RequestTooLarge, QueueFull
    (reject) once full; accepted items survive a reopen, refused ones are not stored."""
    one = len(item("x").model_dump_json())
    q = DurableQueue(tmp_path, settings(max_items=3, max_bytes=max(1024, one * 4)))
    out = q.put_many(
        [item("a"), item("big", n_inputs=1000), item("b"), item("a"), item("c"), item("d")]
    )
    assert out[0] == [] and out[2] == [] and out[3] == [] and out[4] == []
    assert isinstance(out[1], RequestTooLarge)
    assert isinstance(out[5], QueueFull)
    q.close()
    again = DurableQueue(tmp_path, settings(max_items=3, max_bytes=max(1024, one * 4)))
    assert [g.request_id for g in again.oldest(10)] == ["a", "b", "c"]
    again.close()


def test_put_many_with_drop_oldest_reports_the_dropped_ids(tmp_path: Path) -> None:
    """Under drop_oldest, put_many reports per item which older ids made room for it."""
    q = DurableQueue(tmp_path, settings(max_items=2, on_full="drop_oldest"))
    q.put(item("old"))
    assert q.put_many([item("n1"), item("n2"), item("n3")]) == [[], ["old"], ["n1"]]
    assert [g.request_id for g in q.oldest(10)] == ["n2", "n3"]
    q.close()


def test_removed_inputs_do_not_stay_on_disk(tmp_path: Path) -> None:
    """Once synced items leave and the queue is empty, no queue file (database, WAL) holds
    their inputs, with the queue still open."""
    q = DurableQueue(tmp_path, settings())
    marked = [item(f"s{i}").model_copy(update={"inputs": [13.3713 + i] * 40}) for i in range(50)]
    q.put_many(marked)
    kept = item("kept").model_copy(update={"inputs": [7.7717] * 40})
    q.put(kept)

    def on_disk(needle: bytes) -> bool:
        return any(needle in p.read_bytes() for p in tmp_path.iterdir() if p.is_file())

    assert on_disk(b"13.3713") and on_disk(b"7.7717")
    q.remove(i.request_id for i in marked)
    q.remove(["kept"])
    assert not on_disk(b"13.3713") and not on_disk(b"7.7717")
    q.close()
    assert not on_disk(b"13.3713")
