"""`edgeroute eval`: replay a labelled file through a node and measure what it did.

Rows come from a CSV file (feature columns, then or among them a label column) or a
JSON-lines file (`{"inputs": [...], "label": ...}`). Each row gets a fresh request id,
so the decision log the node writes joins the labels file this writes
(`{request_id: label}`, what `edgeroute policy simulate/calibrate --labels` read). The
rows are sent in batches through a `Send` function: the node's HTTP API
(`edgeroute.client.Client.infer_many`) or a node built in process by `Node` (the same
pipeline). One bad row is reported with its line number and does not stop the others.
"""

from __future__ import annotations

import csv
import json
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from router.errors import ConfigError

Send = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
"""Sends a batch of request bodies; returns one entry per item: the answer body, or an
`ItemError`-shaped dict (`status: "error"`)."""


@dataclass(frozen=True, slots=True)
class Row:
    """One labelled example: its line in the file, its inputs and its true label."""

    line: int
    inputs: list[float]
    label: str


@dataclass
class EvalReport:
    """What the node did with the rows. Accuracies are shares of the rows they cover
    (None when they cover none): `final` of answered rows (the label the client got),
    `edge` / `cloud` of rows whose decision record has that model's label (filled from
    the decision log when it is at hand). Latencies are the node's own, p50 per route."""

    rows: int = 0
    answered: int = 0
    pending: int = 0
    refused: int = 0
    routes: dict[str, int] = field(default_factory=dict)
    escalation_rate: float = 0.0
    final_accuracy: float | None = None
    edge_accuracy: float | None = None
    cloud_accuracy: float | None = None
    latency_p50_ms: dict[str, float] = field(default_factory=dict)
    bad_rows: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-able data."""
        return asdict(self)


def read_rows(path: Path, label_column: str = "label") -> Iterator[Row | str]:
    """The rows of `path` (.csv or .jsonl), in order: a `Row`, or a one-line message for a
    row that cannot be used (line number, what is wrong). Raises ConfigError if the file
    cannot be read or has no label column."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the data file ({exc})", field="data") from None
    if path.suffix in (".jsonl", ".ndjson"):
        yield from _jsonl_rows(text, path)
    else:
        yield from _csv_rows(text, path, label_column)


def _jsonl_rows(text: str, path: Path) -> Iterator[Row | str]:
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            inputs = [float(v) for v in obj["inputs"]]
            yield Row(n, inputs, str(obj["label"]))
        except (ValueError, TypeError, KeyError) as exc:
            yield f'{path}:{n}: expected {{"inputs": [numbers], "label": ...}} ({exc!r})'


def _csv_rows(text: str, path: Path, label_column: str) -> Iterator[Row | str]:
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if header is None or label_column not in header:
        raise ConfigError(
            f"{path}: the first row must name the columns, one of them {label_column!r} "
            f"(got {header})",
            field="label_column",
        )
    at = header.index(label_column)
    for n, cells in enumerate(reader, start=2):
        if not cells:
            continue
        if len(cells) != len(header):
            yield f"{path}:{n}: {len(cells)} cells, the header has {len(header)}"
            continue
        try:
            inputs = [float(v) for i, v in enumerate(cells) if i != at]
        except ValueError as exc:
            yield f"{path}:{n}: {exc}"
            continue
        yield Row(n, inputs, cells[at])


def run_eval(
    rows: Sequence[Row],
    task: str,
    send: Send,
    *,
    batch_size: int = 32,
    on_batch: Callable[[int], None] = lambda n: None,
) -> tuple[EvalReport, dict[str, str]]:
    """Send `rows` for `task` in batches of `batch_size`; returns the report (without the
    edge/cloud accuracies: see `add_log_accuracy`) and the labels `{request_id: label}`.
    `on_batch(n)` is called after each batch of n rows (a progress bar)."""
    run = uuid.uuid4().hex[:8]
    labels: dict[str, str] = {}
    report = EvalReport(rows=len(rows))
    routes: Counter[str] = Counter()
    latency: defaultdict[str, list[float]] = defaultdict(list)
    right = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        ids = [f"eval-{run}-{r.line}" for r in chunk]
        bodies: list[dict[str, Any]] = [
            {"task": task, "inputs": r.inputs, "request_id": rid}
            for r, rid in zip(chunk, ids, strict=True)
        ]
        for row, rid, out in zip(chunk, ids, send(bodies), strict=True):
            if out.get("status") == "error":
                report.refused += 1
                err = out.get("error") or {}
                report.bad_rows.append(f"line {row.line}: {err.get('message', err)}")
                continue
            labels[rid] = row.label
            route = str(out["route"])
            routes[route] += 1
            latency[route].append(float(out["latency_ms"]))
            if out.get("status") == "accepted" or out.get("label") is None:
                report.pending += 1
                continue
            report.answered += 1
            right += out["label"] == row.label
        on_batch(len(chunk))
    report.routes = dict(routes)
    sent = sum(routes.values())
    report.escalation_rate = (routes["cloud"] + routes["queued"]) / sent if sent else 0.0
    report.final_accuracy = right / report.answered if report.answered else None
    report.latency_p50_ms = {k: round(_median(v), 3) for k, v in sorted(latency.items())}
    return report, labels


def add_log_accuracy(report: EvalReport, log: Path, labels_file: Path) -> None:
    """Fill the edge and cloud accuracies from the node's decision log at `log` joined
    with the labels file (only the requests the labels name). Raises LogInputError if the
    log cannot be read."""
    from edgeroute.policy_log import load_requests

    wanted = set(json.loads(labels_file.read_text(encoding="utf-8")))
    reqs = [r for r in load_requests(log, labels_file) if r.request_id in wanted]
    edge = [r.edge_label == r.true_label for r in reqs]
    cloud = [r.cloud_label == r.true_label for r in reqs if r.cloud_label is not None]
    report.edge_accuracy = sum(edge) / len(edge) if edge else None
    report.cloud_accuracy = sum(cloud) / len(cloud) if cloud else None


def _median(values: list[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
