"""Reading a decision log (and a labels file) into `router.calibration.LoggedRequest`s, and
the calibration plot. The I/O half of `edgeroute policy simulate/calibrate/diff`."""

from __future__ import annotations

import json
from pathlib import Path

from router.calibration import Choice, Curve, LoggedRequest
from router.errors import EdgerouteError


class LogInputError(EdgerouteError):
    """The decision log or labels file given to a policy tool cannot be used."""

    code = "invalid_log"


def load_requests(
    log: Path, labels: Path | None = None, results: Path | None = None
) -> list[LoggedRequest]:
    """Every request of the decision log at `log` (a data dir's `decisions/` folder or one
    `.jsonl` file), oldest first, with its true label from `labels` (JSON
    `{request_id: label}`) when given. The cloud's final answer to a queued request comes
    from a `sync` record, or else from the node's result store at `results` (a data dir's
    `results/` folder; read only). Raises LogInputError if there is no log or the labels
    file is bad."""
    from edge_node.observe.decision_log import DecisionRecord, read_decision_log

    if log.is_file():
        records = [
            DecisionRecord.model_validate_json(line)
            for line in log.read_bytes().splitlines()
            if line.strip()
        ]
    elif log.is_dir():
        records = list(read_decision_log(log))
    else:
        raise LogInputError(f"{log}: no decision log (a decisions/ folder or a .jsonl file)")
    truth = _read_labels(labels) if labels is not None else {}
    synced = {r.request_id: r.cloud_label for r in records if r.kind == "sync" and r.cloud_label}
    if results is not None and results.is_dir():
        wanted = {r.request_id for r in records if r.kind == "decision" and not r.cloud_label}
        synced = {**synced_answers(results, wanted - set(synced)), **synced}
    out = []
    for r in records:
        if r.kind != "decision" or not r.edge_candidates:
            continue
        out.append(
            LoggedRequest(
                request_id=r.request_id,
                task=r.task,
                ts=r.ts,
                scores=dict(r.scores),
                edge_label=r.edge_candidates[0].label,
                edge_top=tuple((c.label, c.score) for c in r.edge_candidates),
                cloud_label=r.cloud_label or synced.get(r.request_id),
                true_label=truth.get(r.request_id, r.true_label),
            )
        )
    if not out:
        raise LogInputError(f"{log}: the decision log has no records")
    return out


def synced_answers(results: Path, request_ids: set[str]) -> dict[str, str]:
    """request_id -> the cloud's label, for the ids the node's result store has as `done`
    (queued requests the sync worker got a cloud answer for)."""
    from edge_node.storage.result_store import ResultStore

    store = ResultStore(results, retention_s=float("inf"))
    try:
        out: dict[str, str] = {}
        for rid in request_ids:
            rec = store.get(rid)
            final = rec.get("result") if rec is not None and rec.get("status") == "done" else None
            if isinstance(final, dict) and isinstance(final.get("label"), str):
                out[rid] = final["label"]
        return out
    finally:
        store.close()


def _read_labels(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LogInputError(f"{path}: cannot read labels: {exc}") from None
    if not isinstance(data, dict):
        raise LogInputError(f"{path}: labels must be a JSON object {{request_id: label}}")
    return {str(k): str(v) for k, v in data.items()}


def plot_curves(curves: dict[str, tuple[Curve, Choice]], currency: str, out: Path) -> None:
    """Write a PNG: per task, expected accuracy and cost per 1000 requests against the
    escalation rate, with the chosen threshold marked. Uses matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(6.5 * len(curves), 4.5), squeeze=False)
    for ax, (task, (curve, choice)) in zip(axes[0], curves.items(), strict=True):
        ax.plot(curve.escalation * 100, curve.accuracy * 100, color="tab:blue", label="accuracy")
        ax.set_xlabel("escalation rate (%)")
        ax.set_ylabel("expected accuracy (%)", color="tab:blue")
        cost_ax = ax.twinx()
        cost_ax.plot(curve.escalation * 100, curve.cost_per_1k, color="tab:orange", label="cost")
        cost_ax.set_ylabel(f"cost per 1000 requests ({currency})", color="tab:orange")
        ax.plot(
            [choice.escalation * 100],
            [choice.accuracy * 100],
            marker="o",
            markersize=9,
            color="tab:red",
        )
        ax.annotate(
            f"threshold {choice.threshold:g}\n{choice.escalation:.1%} escalated\n"
            f"accuracy {choice.accuracy:.2%}",
            (choice.escalation * 100, choice.accuracy * 100),
            textcoords="offset points",
            xytext=(10, -40),
        )
        ax.set_title(f"{task}: {choice.score} score")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
