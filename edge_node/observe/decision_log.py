"""The decision log: one JSON line per request in `directory/decisions.jsonl`, size-rotated.

A record holds scores, the decision, its reason, labels and latency; never inputs (the model
has no field for them and forbids extra keys). `DecisionLog.write` only appends to an
in-memory buffer, so it stays off the request's hot path; a background thread writes the
buffer out every `flush_interval_s` (or sooner once `flush_batch` records are waiting), and
`flush()`/`close()` write it out on demand. Rotation: decisions.jsonl -> .1 -> ... -> .N.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from router.decision import Route
from router.errors import EdgerouteError
from router.wire import WireCandidate

if TYPE_CHECKING:
    from edge_node.storage.queued_item import QueuedItem
    from router.wire import RerankResult

SYNCED_REASON = "synced"
"""The reason of a sync record (the sync worker's reason for a synced item)."""

LOG_NAME = "decisions.jsonl"
Clock = Callable[[], float]
_log = structlog.get_logger(__name__)


class DecisionLogError(EdgerouteError):
    """The decision log could not be read (a corrupt line) or written."""

    code = "decision_log_error"


class DecisionRecord(BaseModel):
    """What was decided for one request. Frozen; unknown fields (e.g. inputs) are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ts: float = Field(description="UNIX time of the decision, seconds.")
    request_id: str
    task: str
    policy_revision: str
    model_version: str
    scores: dict[str, float]
    edge_candidates: tuple[WireCandidate, ...]
    route: Route
    reason: str
    final_label: str | None = None
    cloud_label: str | None = None
    cloud_candidates: tuple[WireCandidate, ...] | None = None
    budget: str | None = Field(
        default=None, description="The exhausted budget's name when reason is budget_exhausted."
    )
    kind: Literal["decision", "sync"] = Field(
        default="decision",
        description="decision: one per request; sync: the cloud's final answer to a queued "
        "request (route/reason repeat the original decision; cloud_* is the answer).",
    )
    latency_ms: float = Field(ge=0.0)
    true_label: str | None = Field(
        default=None, description="Ground truth; set only by the demo (calibration)."
    )


def _encode(batch: list[DecisionRecord | bytes]) -> list[bytes]:
    """One JSON line per record (encoded ones are taken as they are)."""
    return [(r if isinstance(r, bytes) else r.model_dump_json().encode()) + b"\n" for r in batch]


@dataclass(frozen=True, slots=True)
class DecisionLogStats:
    """Counters: records buffered now, written, dropped (buffer full or log closed), rotations,
    and the clock time of the last completed flush (None before the first)."""

    pending: int
    written: int
    dropped: int
    rotations: int
    last_flush_at: float | None


class DecisionLog:
    """Buffered, size-rotated JSON-lines log of `DecisionRecord`s. Thread-safe.

    Lines are written whole, in `write` order, by one writer at a time. At most `max_buffer`
    records wait in memory; beyond that `write` drops the record (counted in `stats().dropped`)
    rather than block the request. `background=False` starts no thread: call `flush()`
    yourself. Writing to disk raises nothing to `write` callers; I/O errors in the background
    thread are logged and the batch is counted as dropped.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        max_bytes: int = 16 * 1024 * 1024,
        backups: int = 5,
        clock: Clock = time.time,
        flush_interval_s: float = 0.2,
        flush_batch: int = 1_000,
        max_buffer: int = 100_000,
        background: bool = True,
    ) -> None:
        if max_bytes < 1 or backups < 0:
            raise ValueError("max_bytes must be >= 1 and backups >= 0")
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._path = self._dir / LOG_NAME
        self._max_bytes = max_bytes
        self._backups = backups
        self._clock = clock
        self._interval = flush_interval_s
        self._flush_batch = flush_batch
        self._max_buffer = max_buffer
        self._lock = threading.Lock()  # guards the buffer and counters
        self._io_lock = threading.Lock()  # one writer at a time, in order
        self._buffer: list[DecisionRecord | bytes] = []
        self._wake = threading.Event()
        self._closed = False
        self._written = self._dropped = self._rotations = 0
        self._last_flush: float | None = None
        self._file: IO[bytes] | None = None
        self._size = 0
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
            self._thread.start()

    @property
    def path(self) -> Path:
        """The current (newest) log file."""
        return self._path

    def write(self, record: DecisionRecord | bytes) -> None:
        """Queue one record: a DecisionRecord, or one already encoded as a JSON object in
        the DecisionRecord shape (the request path's records come this way, unvalidated:
        `read_decision_log` validates every line). Microseconds, no I/O. Dropped and
        counted if closed or full."""
        with self._lock:
            if self._closed or len(self._buffer) >= self._max_buffer:
                self._dropped += 1
                return
            self._buffer.append(record)
            wake = len(self._buffer) >= self._flush_batch
        if wake:
            self._wake.set()

    def flush(self) -> None:
        """Write every buffered record to disk now (rotating as needed). Raises
        DecisionLogError if the file cannot be written; the batch is then dropped."""
        with self._io_lock:
            with self._lock:
                batch, self._buffer = self._buffer, []
            if not batch:
                return
            lines = _encode(batch)
            try:
                self._write_lines(lines)
            except OSError as exc:
                with self._lock:
                    self._dropped += len(batch)
                raise DecisionLogError(f"cannot write decision log: {exc}") from exc
            with self._lock:
                self._written += len(lines)
                self._last_flush = self._clock()

    def close(self) -> None:
        """Stop the background thread, flush what is buffered and close the file. Idempotent;
        later `write`s are dropped."""
        with self._lock:
            self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        self.flush()
        with self._io_lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def stats(self) -> DecisionLogStats:
        """A snapshot of the counters."""
        with self._lock:
            return DecisionLogStats(
                len(self._buffer), self._written, self._dropped, self._rotations, self._last_flush
            )

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writer side (under _io_lock) --------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            with self._lock:
                closed = self._closed
            if closed:
                return  # close() does the final flush
            try:
                self.flush()
            except DecisionLogError as exc:
                _log.warning("decision_log_write_failed", reason=str(exc))

    def _write_lines(self, lines: list[bytes]) -> None:
        chunk: list[bytes] = []
        size = self._open()
        for line in lines:
            if size > 0 and size + len(line) > self._max_bytes:
                self._append(chunk)
                chunk = []
                self._rotate()
                size = self._open()
            chunk.append(line)
            size += len(line)
        self._append(chunk)

    def _open(self) -> int:
        if self._file is None:
            self._file = open(self._path, "ab")  # noqa: SIM115 - kept open across flushes
            self._size = self._file.tell()
        return self._size

    def _append(self, chunk: list[bytes]) -> None:
        if not chunk or self._file is None:
            return
        data = b"".join(chunk)
        self._file.write(data)
        self._file.flush()
        self._size += len(data)

    def _rotate(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._backups == 0:
            self._path.unlink(missing_ok=True)
        else:
            for i in range(self._backups - 1, 0, -1):
                src = self._rotated(i)
                if src.exists():
                    os.replace(src, self._rotated(i + 1))
            os.replace(self._path, self._rotated(1))
        with self._lock:
            self._rotations += 1

    def _rotated(self, i: int) -> Path:
        return self._dir / f"{LOG_NAME}.{i}"


def read_decision_log(directory: str | Path) -> Iterator[DecisionRecord]:
    """Every record in `directory`, oldest first (decisions.jsonl.N ... .1, then the current
    file). A final line without its newline (cut off by a crash) is skipped; any other bad
    line raises DecisionLogError naming file and line."""
    base = Path(directory) / LOG_NAME
    rotated = sorted(
        (p for p in base.parent.glob(LOG_NAME + ".*") if p.suffix[1:].isdigit()),
        key=lambda p: -int(p.suffix[1:]),
    )
    for path in [*rotated, base]:
        if not path.exists():
            continue
        with open(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                if not line.endswith(b"\n"):
                    break  # torn last line
                try:
                    yield DecisionRecord.model_validate_json(line)
                except ValidationError as exc:
                    raise DecisionLogError(
                        f"{path.name}:{number}: invalid decision record: "
                        f"{exc.error_count()} error(s)"
                    ) from exc


def sync_record(
    *,
    ts: float,
    request_id: str,
    task: str,
    reason: str,
    edge_candidates: tuple[WireCandidate, ...],
    cloud_label: str,
    cloud_candidates: tuple[WireCandidate, ...],
    model_version: str,
    policy_revision: str,
) -> DecisionRecord:
    """The record that logs the cloud's final answer to a synced queue item (`kind="sync"`):
    the calibration tools join it to the request's decision record by `request_id`. Holds
    no inputs. `scores` is empty: they are in the decision record. (The sync worker writes
    the same record encoded, `sync_record_json`.)"""
    return DecisionRecord.model_validate_json(
        sync_record_json(
            ts=ts,
            request_id=request_id,
            task=task,
            reason=reason,
            edge_candidates=[(c.label, c.score) for c in edge_candidates],
            cloud_label=cloud_label,
            cloud_candidates=[(c.label, c.score) for c in cloud_candidates],
            model_version=model_version,
            policy_revision=policy_revision,
        )
    )


def sync_record_json(
    *,
    ts: float,
    request_id: str,
    task: str,
    reason: str,
    edge_candidates: Sequence[tuple[str, float]],
    cloud_label: str,
    cloud_candidates: Sequence[tuple[str, float]],
    model_version: str,
    policy_revision: str,
) -> bytes:
    """`sync_record` as the JSON line `DecisionLog.write` takes (not validated here, as
    the request path's records are not: `read_decision_log` validates every line)."""
    return orjson.dumps(
        {
            "ts": ts,
            "request_id": request_id,
            "task": task,
            "policy_revision": policy_revision,
            "model_version": model_version,
            "scores": {},
            "edge_candidates": [{"label": lb, "score": sc} for lb, sc in edge_candidates],
            "route": "cloud",
            "reason": reason,
            "final_label": cloud_label,
            "cloud_label": cloud_label,
            "cloud_candidates": [{"label": lb, "score": sc} for lb, sc in cloud_candidates],
            "budget": None,
            "kind": "sync",
            "latency_ms": 0.0,
            "true_label": None,
        }
    )


def sync_recorder(
    log: DecisionLog, revision: Callable[[], str], *, clock: Clock = time.time
) -> Callable[[Sequence[tuple[QueuedItem, RerankResult]]], None]:
    """A `SyncWorker.on_synced` hook: one `sync_record` per synced item into `log`, under
    the policy revision in force (`revision()`), so the calibration tools see the cloud's
    answer to queued requests. Holds no inputs. Never raises and does no I/O (the log
    writes in its own thread); thread-safe as `DecisionLog.write` is."""

    def record(done: Sequence[tuple[QueuedItem, RerankResult]]) -> None:
        rev, ts = revision(), clock()
        for item, res in done:
            log.write(
                sync_record_json(
                    ts=ts,
                    request_id=item.request_id,
                    task=item.task,
                    reason=SYNCED_REASON,
                    edge_candidates=item.edge_candidates,
                    cloud_label=res.label,
                    cloud_candidates=[(c.label, c.score) for c in res.candidates],
                    model_version=res.model_version,
                    policy_revision=rev,
                )
            )

    return record
