"""`edgeroute cloud ...`: the cloud re-ranking service."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from edgeroute.cli_common import fail, log_options, require_port
from router.errors import EdgerouteError

F = TypeVar("F", bound=Callable[..., Any])

# ---- cloud ------------------------------------------------------------------------------


def _bundles_option(help_text: str) -> Callable[[F], F]:
    return click.option(
        "--bundles",
        default="models/cloud",
        show_default=True,
        type=click.Path(path_type=Path),
        help=help_text,
    )


def _tokens_option(help_text: str) -> Callable[[F], F]:
    return click.option(
        "--tokens-file", default=None, type=click.Path(path_type=Path), help=help_text
    )


@click.group()
def cloud() -> None:
    """The cloud re-ranking service (Ray Serve)."""


@cloud.command("serve")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--host", default="127.0.0.1", show_default=True)
@_bundles_option("Folder of cloud bundles, one per task.")
@_tokens_option("File of `node_id token` lines; when set, every call needs its token.")
@click.option(
    "--ready-file",
    default=None,
    type=click.Path(path_type=Path),
    help="Written once the app is serving (for supervisors and tests).",
)
@log_options(1.0, "Share of answered calls that get a per-request `rerank_answered` line.")
def cloud_serve(
    port: int,
    host: str,
    bundles: Path,
    tokens_file: Path | None,
    ready_file: Path | None,
    log_level: str,
    log_sample_rate: float,
) -> None:
    """Start a local Ray instance (dashboard off, token authentication on) and serve the
    re-ranker on --host:--port until SIGTERM. Ray's own servers do not all listen on
    loopback only (README, "Run on a Ray cluster")."""
    from cloud_service.server import run_cloud
    from cloud_service.settings import CloudServiceSettings
    from router.log_setup import configure_logging

    configure_logging(log_level)
    require_port(host, port)
    settings = CloudServiceSettings(
        bundles_dir=bundles,
        host=host,
        port=port,
        tokens_file=tokens_file,
        log_level=log_level,
        log_sample_rate=log_sample_rate,
    )
    try:
        run_cloud(settings, ready_file=ready_file)
    except EdgerouteError as exc:
        fail(exc)


@cloud.command("config")
@_bundles_option("Folder of cloud bundles, one per task (must exist on every Ray node).")
@_tokens_option("File of `node_id token` lines (must exist on every Ray node).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Serve's HTTP host.")
@click.option("--port", default=8000, show_default=True, type=int, help="Serve's HTTP port.")
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write the Serve config (for `serve run` / `serve deploy`).",
)
def cloud_config(bundles: Path, tokens_file: Path | None, host: str, port: int, out: Path) -> None:
    """Write a Serve config for a Ray cluster on this machine: the shipped
    cloud_service/serve_config.yaml with absolute paths and the HTTP address given."""
    from edgeroute.serve_config import local_config, render

    require_port(host, port)
    try:
        out.write_text(render(local_config(bundles, tokens_file, host, port)), encoding="utf-8")
    except EdgerouteError as exc:
        fail(exc)
    except OSError as exc:
        fail(EdgerouteError(f"--out: cannot write {out}: {exc.strerror}", field="--out"))
    click.echo(f"wrote {out}")


@cloud.command("stop")
@click.option(
    "--temp-dir",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="The cluster's `ray start --temp-dir`.",
)
@click.option(
    "--grace", default=10.0, show_default=True, type=float, help="Seconds before SIGKILL."
)
def cloud_stop(temp_dir: Path, grace: float) -> None:
    """Stop the Ray cluster started with `--temp-dir` (SIGTERM, then SIGKILL after the
    grace time), by pid; other Ray instances on the machine are left alone."""
    from edgeroute.ray_cluster import stop_cluster

    if not temp_dir.is_dir():
        fail(EdgerouteError(f"--temp-dir: {temp_dir} is not a folder", field="--temp-dir"))
    try:
        signalled, left = stop_cluster(temp_dir.resolve(), grace_s=grace)
    except EdgerouteError as exc:
        fail(exc)
    if not signalled:
        click.echo(f"nothing to stop: no process of a Ray cluster in {temp_dir} is running")
        return
    if left:
        fail(EdgerouteError(f"{len(left)} of the cluster's processes did not stop: {sorted(left)}"))
    click.echo(f"stopped {len(signalled)} processes of the cluster in {temp_dir}")
