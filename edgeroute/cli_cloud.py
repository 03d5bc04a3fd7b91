"""`edgeroute cloud ...`: the cloud re-ranking service."""

from __future__ import annotations

from pathlib import Path

import click

from edgeroute.cli_common import fail, log_options, require_port
from router.errors import EdgerouteError

# ---- cloud ------------------------------------------------------------------------------


@click.group()
def cloud() -> None:
    """The cloud re-ranking service (Ray Serve)."""


@cloud.command("serve")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--bundles",
    default="models/cloud",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Folder of cloud bundles, one per task.",
)
@click.option(
    "--tokens-file",
    default=None,
    type=click.Path(path_type=Path),
    help="File of `node_id token` lines; when set, every call needs its token.",
)
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
    """Start a local Ray instance on 127.0.0.1 and serve the re-ranker until SIGTERM."""
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
