"""`edgeroute eval`: replay a labelled file through a node (running, or built in process)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from edgeroute.evaluate import Row, Send


@click.command("eval")
@click.option(
    "--data",
    "data_file",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Labelled examples: .csv (a header row, a label column) or .jsonl "
    '({"inputs": [...], "label": ...} per line).',
)
@click.option("--task", required=True, help="The task to send the rows to.")
@click.option("--url", default=None, help="A running node's base URL (else: in process).")
@click.option("--token-env", default=None, help="Env var holding the node's API token.")
@click.option(
    "--policy",
    "policy_path",
    default=None,
    type=click.Path(path_type=Path),
    help="In process: the node's policy file.",
)
@click.option(
    "--data-dir",
    default=None,
    type=click.Path(path_type=Path),
    help="In process: the node's data dir (its decision log is written there).",
)
@click.option(
    "--log",
    default=None,
    type=click.Path(path_type=Path),
    help="With --url: the node's decisions/ folder, for the edge and cloud accuracies.",
)
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False))
@click.option("--label-column", default="label", show_default=True)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 1000))
def eval_cmd(
    data_file: Path,
    task: str,
    url: str | None,
    token_env: str | None,
    policy_path: Path | None,
    data_dir: Path | None,
    log: Path | None,
    out: Path,
    label_column: str,
    batch_size: int,
) -> None:
    """Send every labelled row of DATA to TASK and write OUT/labels.json ({request_id:
    label}, for `policy simulate/calibrate --labels`) and OUT/report.json (accuracy of the
    edge, the cloud and the final answers; escalation; p50 latency per route)."""
    from edgeroute.cli_common import fail
    from edgeroute.evaluate import add_log_accuracy, read_rows, run_eval
    from router.errors import ConfigError

    if (url is None) == (policy_path is None) or (policy_path is not None and data_dir is None):
        fail(ConfigError("give --url, or --policy and --data-dir (in process)", field="url"))
    parsed = list(read_rows(data_file, label_column))
    rows = [r for r in parsed if isinstance(r, Row)]
    bad = [r for r in parsed if isinstance(r, str)]
    for message in bad[:20]:
        click.echo(f"skipped: {message}", err=True)
    if not rows:
        fail(ConfigError(f"{data_file}: no usable rows", field="data"))
    out.mkdir(parents=True, exist_ok=True)
    progress = click.progressbar(length=len(rows), label="eval", file=sys.stderr)
    with _sender(url, token_env, policy_path, data_dir) as send, progress as bar:
        report, labels = run_eval(rows, task, send, batch_size=batch_size, on_batch=bar.update)
    report.bad_rows = bad + report.bad_rows
    labels_file = out / "labels.json"
    labels_file.write_text(json.dumps(labels, indent=1) + "\n", encoding="utf-8")
    log = log if url is not None else (data_dir / "decisions" if data_dir else None)
    if log is not None:
        add_log_accuracy(report, log, labels_file)
    (out / "report.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    _print(report, labels_file, log)


@contextmanager
def _sender(
    url: str | None, token_env: str | None, policy_path: Path | None, data_dir: Path | None
) -> Iterator[Send]:
    """The batch sender: HTTP to `url`, or a node built in process by `Node` (started,
    its sync worker included, and stopped at the end)."""
    if url is not None:
        from edgeroute.client import Client

        token = os.environ.get(token_env) if token_env else None
        with Client(url, timeout_s=60.0, token=token) as client:

            def over_http(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
                return [r.model_dump() for r in client.infer_many(bodies)]

            yield over_http
        return
    from pydantic import ValidationError

    from edge_node.node import Node
    from edge_node.settings import EdgeSettings
    from router.edge_api import InferRequest
    from router.errors import EdgerouteError, InputError

    assert policy_path is not None and data_dir is not None
    node = Node(EdgeSettings(policy_path=policy_path, data_dir=data_dir, log_sample_rate=0.0))
    with asyncio.Runner() as runner:
        try:
            runner.run(node.start())

            def in_process(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
                reqs: list[InferRequest | EdgerouteError] = []
                for b in bodies:
                    try:
                        reqs.append(InferRequest.model_validate(b))
                    except ValidationError as exc:
                        first = exc.errors(include_url=False)[0]
                        field = ".".join(str(p) for p in first["loc"])
                        reqs.append(InputError(f"{field}: {first['msg']}", field=field))
                answer = runner.run(node.service.infer_batch(reqs))
                results: list[dict[str, Any]] = answer.body["results"]
                return results

            yield in_process
        finally:
            runner.run(node.stop())


def _print(report: Any, labels_file: Path, log: Path | None) -> None:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2%}"

    click.echo(
        f"{report.rows} rows: {report.answered} answered, {report.pending} pending, "
        f"{report.refused} refused; escalation {report.escalation_rate:.1%}"
    )
    click.echo(
        f"accuracy: final {pct(report.final_accuracy)}, edge {pct(report.edge_accuracy)}, "
        f"cloud {pct(report.cloud_accuracy)}"
    )
    for route, n in sorted(report.routes.items()):
        click.echo(f"  {route:<7} {n:6d}  p50 {report.latency_p50_ms.get(route, 0):.3f} ms")
    click.echo(f"labels written to {labels_file}")
    if log is not None:
        click.echo(f"decision log: {log}")
