"""Decision log: buffered JSON lines, size rotation, no inputs, thread-safe writes."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edge_node.observe.decision_log import (
    LOG_NAME,
    DecisionLog,
    DecisionLogError,
    DecisionRecord,
    read_decision_log,
)
from router.wire import WireCandidate
from tests.waiting import wait_until


def _record(i: int, **over: Any) -> DecisionRecord:
    fields: dict[str, Any] = {
        "ts": 1_700_000_000.0 + i,
        "request_id": f"req-{i}",
        "task": "digits",
        "policy_revision": "abc123",
        "model_version": "edge-v1",
        "scores": {"margin": 0.25, "max_prob": 0.6},
        "edge_candidates": [WireCandidate(label="3", score=0.6), {"label": "8", "score": 0.35}],
        "route": "cloud",
        "reason": "below_threshold",
        "final_label": "8",
        "cloud_label": "8",
        "cloud_candidates": [{"label": "8", "score": 0.9}],
        "latency_ms": 12.5,
    }
    fields.update(over)
    return DecisionRecord.model_validate(fields)


def test_round_trip(tmp_path: Path) -> None:
    """Records written then flushed read back equal, in order, optional fields included."""
    records = [
        _record(0),
        _record(1, cloud_label=None, cloud_candidates=None, route="edge"),
        _record(2, true_label="8"),
    ]
    with DecisionLog(tmp_path, background=False) as log:
        for r in records:
            log.write(r)
        assert list(read_decision_log(tmp_path)) == []  # buffered, not yet on disk
        log.flush()
        assert list(read_decision_log(tmp_path)) == records
        assert log.stats().written == 3


def test_rotation_keeps_order_and_bounds_files(tmp_path: Path) -> None:
    """Size rotation produces .1..N, keeps each file under max_bytes, reads back in order."""
    line = len(_record(0).model_dump_json()) + 1
    with DecisionLog(tmp_path, max_bytes=line * 3, backups=10, background=False) as log:
        for i in range(20):
            log.write(_record(i))
            if i % 4 == 3:
                log.flush()
    ids = [r.request_id for r in read_decision_log(tmp_path)]
    assert ids == [f"req-{i}" for i in range(20)]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert f"{LOG_NAME}.1" in files and f"{LOG_NAME}.6" in files
    assert all(p.stat().st_size <= line * 3 + 10 for p in tmp_path.iterdir())


def test_rotation_drops_oldest_beyond_backups(tmp_path: Path) -> None:
    """With backups=2 only the newest records survive: the current file, .1 and .2."""
    line = len(_record(0).model_dump_json()) + 1
    with DecisionLog(tmp_path, max_bytes=line * 2, backups=2, background=False) as log:
        for i in range(10):
            log.write(_record(i))
        log.flush()
    ids = [r.request_id for r in read_decision_log(tmp_path)]
    assert ids == [f"req-{i}" for i in range(4, 10)]
    assert not (tmp_path / f"{LOG_NAME}.3").exists()


def test_inputs_cannot_be_recorded() -> None:
    """extra=forbid: a record cannot carry inputs (or any unknown field), and is frozen."""
    with pytest.raises(ValidationError):
        _record(0, inputs=[0.1, 0.2])
    with pytest.raises(ValidationError):
        _record(0, payload="secret")
    rec = _record(0)
    with pytest.raises(ValidationError):
        rec.final_label = "x"  # type: ignore[misc]
    assert "inputs" not in DecisionRecord.model_fields


def test_close_flushes_and_later_writes_are_dropped(tmp_path: Path) -> None:
    """close() writes the buffer (background thread on, long interval); writes after close
    are counted as dropped."""
    log = DecisionLog(tmp_path, flush_interval_s=60.0)
    log.write(_record(0))
    log.write(_record(1))
    log.close()
    assert [r.request_id for r in read_decision_log(tmp_path)] == ["req-0", "req-1"]
    log.write(_record(2))
    log.close()
    assert log.stats().dropped == 1
    assert len(list(read_decision_log(tmp_path))) == 2


def test_background_thread_flushes_without_being_asked(tmp_path: Path) -> None:
    """With the background thread, records reach disk within a few flush intervals."""
    with DecisionLog(tmp_path, flush_interval_s=0.02, clock=lambda: 42.0) as log:
        log.write(_record(0))
        wait_until(lambda: log.stats().written >= 1, 2.0, what="the background flush")
        assert log.stats().last_flush_at == 42.0
    assert len(list(read_decision_log(tmp_path))) == 1


def test_concurrent_writers_do_not_interleave(tmp_path: Path) -> None:
    """8 threads x 250 records with background flushing: every line parses, none lost, and
    each writer's records keep their order."""
    with DecisionLog(
        tmp_path, flush_interval_s=0.005, flush_batch=50, max_bytes=64 * 1024, backups=100
    ) as log:

        def writer(w: int) -> None:
            for i in range(250):
                log.write(_record(i, request_id=f"w{w}-{i}"))

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    records = list(read_decision_log(tmp_path))
    assert len(records) == 2000
    for w in range(8):
        mine = [
            int(r.request_id.split("-")[1]) for r in records if r.request_id.startswith(f"w{w}-")
        ]
        assert mine == list(range(250))


def test_full_buffer_drops_instead_of_blocking(tmp_path: Path) -> None:
    """Past max_buffer pending records, write() drops and counts instead of growing."""
    with DecisionLog(tmp_path, max_buffer=3, background=False) as log:
        for i in range(5):
            log.write(_record(i))
        assert log.stats().pending == 3 and log.stats().dropped == 2


def test_torn_last_line_skipped_but_corruption_raises(tmp_path: Path) -> None:
    """A crash-torn final line is skipped; a bad complete line raises DecisionLogError."""
    good = _record(0).model_dump_json().encode() + b"\n"
    (tmp_path / LOG_NAME).write_bytes(good + b'{"ts": 1.0, "requ')
    assert [r.request_id for r in read_decision_log(tmp_path)] == ["req-0"]
    (tmp_path / LOG_NAME).write_bytes(good + b'{"inputs": [1]}\n')
    with pytest.raises(DecisionLogError):
        list(read_decision_log(tmp_path))


def test_write_is_cheap(tmp_path: Path) -> None:
    """write() only buffers: 10k writes average under 20 us each (measured ~1-3 us)."""
    rec = _record(0)
    with DecisionLog(tmp_path, background=False, max_buffer=20_000) as log:
        t0 = time.perf_counter()
        for _ in range(10_000):
            log.write(rec)
        per_write_us = (time.perf_counter() - t0) / 10_000 * 1e6
    assert per_write_us < 20.0, per_write_us


def test_encoded_records_are_written_as_given(tmp_path: Path) -> None:
    """Records given already encoded are written as they are, in order with model records."""
    import orjson

    dlog = DecisionLog(tmp_path, background=False)
    dlog.write(orjson.dumps(_record(1).model_dump(mode="json")))
    dlog.write(_record(2))
    dlog.flush()
    assert [r.request_id for r in read_decision_log(tmp_path)] == ["req-1", "req-2"]
    assert dlog.stats().written == 2
    dlog.close()
