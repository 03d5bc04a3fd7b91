"""`edgeroute queue stats|list|drain|purge --data-dir DIR`: inspect and operate the durable
queue and result store of an edge node's data dir.

`stats` and `list` only read and are safe while the node runs. `drain` and `purge` write,
and the node keeps an in-memory index of its queue, so they take the data dir's writer
lock (`edge_node.storage.data_dir_lock`, held by a running node) and refuse with exit code 2 while
another process holds it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import click
import orjson

from edgeroute.cli_common import fail
from router.errors import EdgerouteError

_STATES = {
    "pending": None,
    "done": "done",
    "expired": "expired",
    "dead": "failed",
    "quarantined": "quarantined",
}
# Only the bounds matter for reads; writes (drain) use the policy's queue settings.
_READ_LIMITS: dict[str, Any] = {"max_items": 100_000_000, "max_bytes": 1 << 40, "on_full": "reject"}


def _open(
    data_dir: Path, queue_settings: Any = None, *, read_only: bool = False
) -> tuple[Any, Any]:
    from edge_node.storage.queue_store import DurableQueue
    from edge_node.storage.result_store import ResultStore
    from router.policy import QueueSettings

    if not (data_dir / "queue").is_dir():
        raise click.ClickException(f"{data_dir} is not an edge node data dir (no queue/)")
    settings = queue_settings or QueueSettings(**_READ_LIMITS)
    return DurableQueue(data_dir / "queue", settings, read_only=read_only), ResultStore(
        data_dir / "results", settings.fsync, read_only=read_only
    )


_data_dir = click.option(
    "--data-dir", required=True, type=click.Path(path_type=Path, file_okay=False, exists=True)
)


@click.group()
def queue() -> None:
    """The durable queue (stats, list, drain, purge)."""


@queue.command("stats")
@_data_dir
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(data_dir: Path, as_json: bool) -> None:
    """Depth, oldest age, bytes, and results per state."""
    try:
        q, rs = _open(data_dir, read_only=True)
        data = {
            "depth": q.depth,
            "bytes": q.bytes,
            "oldest_age_s": round(q.oldest_age(time.time()), 3),
            "results": rs.counts(),
        }
        q.close()
        rs.close()
    except EdgerouteError as exc:
        fail(exc)
    if as_json:
        click.echo(orjson.dumps(data).decode())
        return
    click.echo(f"pending (queued): {data['depth']} items, {data['bytes']} bytes")
    click.echo(f"oldest age:       {data['oldest_age_s']} s")
    for state, n in data["results"].items():
        click.echo(f"{state + ':':<17} {n}")


@queue.command("list")
@_data_dir
@click.option("--state", type=click.Choice(sorted(_STATES)), default="pending", show_default=True)
@click.option("--limit", type=int, default=50, show_default=True)
def list_items(data_dir: Path, state: str, limit: int) -> None:
    """One JSON line per item in `state` (dead = dead-lettered, with its last error;
    quarantined = queue rows and results that could not be read, with the reason); inputs
    are never printed."""
    try:
        q, rs = _open(data_dir, read_only=True)
        if _STATES[state] is None:
            rows = [
                {
                    "request_id": i.request_id,
                    "task": i.task,
                    "status": "pending",
                    "reason": i.reason,
                    "enqueued_at": i.enqueued_at,
                    "attempts": i.attempts,
                    "last_error": i.last_error,
                }
                for i in q.oldest(limit)
            ]
        else:
            rows = [
                {k: v for k, v in r.items() if k not in ("provisional", "result")}
                for r in rs.records(_STATES[state], limit)
            ]
        if state == "quarantined":  # queue rows and stored results that could not be read
            rows = [*q.shelf.records(limit), *rows][:limit]
        q.close()
        rs.close()
    except EdgerouteError as exc:
        fail(exc)
    for row in rows:
        click.echo(orjson.dumps(row).decode())


@queue.command("purge")
@_data_dir
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge(data_dir: Path, yes: bool) -> None:
    """Delete every queued item (recorded as expired, reason `purged`). Asks first unless
    --yes; refuses while the node (or another drain/purge) runs on DATA_DIR."""
    from edge_node.storage.data_dir_lock import exclusive

    try:
        with exclusive(data_dir, "edgeroute queue purge"):
            q, rs = _open(data_dir)
            try:
                n = q.depth
                if n and not yes:
                    click.confirm(f"purge {n} queued items from {data_dir}?", abort=True)
                items = q.oldest(n) if n else []
                for item in items:
                    rs.put_expired(item.request_id, "purged")
                removed = q.remove(i.request_id for i in items)
            finally:
                q.close()
                rs.close()
    except EdgerouteError as exc:
        fail(exc)
    click.echo(f"purged {removed} items")


@queue.command("drain")
@_data_dir
@click.option("--policy", "policy_path", required=True, type=click.Path(path_type=Path))
@click.option("--cloud-url", default=None, help="Overrides the policy's cloud.url.")
@click.option("--timeout", "timeout_s", type=float, default=300.0, show_default=True)
def drain(data_dir: Path, policy_path: Path, cloud_url: str | None, timeout_s: float) -> None:
    """Sync the queue to the cloud now, with a progress bar. Refuses while the node (or
    another drain/purge) runs on DATA_DIR."""
    from edge_node.node import Node
    from edge_node.settings import EdgeSettings
    from edge_node.storage.data_dir_lock import exclusive

    try:
        settings = EdgeSettings(policy_path=policy_path, data_dir=data_dir, cloud_url=cloud_url)
        with exclusive(data_dir, "edgeroute queue drain"):  # refuse first if the node runs
            node = Node(settings, role="edgeroute queue drain")
            left = asyncio.run(_drain(node, timeout_s))
    except EdgerouteError as exc:
        fail(exc)
    if left:
        raise click.ClickException(f"{left} items still queued (cloud unreachable?)")
    click.echo("queue drained")


async def _drain(node: Any, timeout_s: float) -> int:
    """Drain rounds through the node's own sync worker (the same escalation step, budget
    and decision records as the running node) until the queue is empty, the budget is
    spent, the cloud refuses the node's credentials, or `timeout_s` has passed; returns
    the items left. Closes the node."""
    q, worker = node.queue, node.sync
    total = q.depth
    end = time.monotonic() + timeout_s
    try:
        with click.progressbar(length=total, label="draining") as bar:
            while q.depth and time.monotonic() < end:
                before = q.depth
                await worker.probe()
                report = await worker.run_once()
                bar.update(before - q.depth)
                if report.over_budget and report.sent == 0:
                    click.echo("\nstopped: the cost budget is exhausted", err=True)
                    break
                if report.paused_credentials:
                    click.echo(
                        "\nstopped: the cloud refused this node's credentials (401/403); "
                        "check cloud.token_env / the cloud's tokens file",
                        err=True,
                    )
                    break
                if report.done == 0:
                    await asyncio.sleep(node.service.active.policy.sync.interval_ms / 1000)
                elif report.pace_s:
                    await asyncio.sleep(report.pace_s)
        left: int = q.depth
    finally:
        await node.stop()
    return left
