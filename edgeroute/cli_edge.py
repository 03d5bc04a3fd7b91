"""`edgeroute edge ...`: the edge node."""

from __future__ import annotations

from pathlib import Path

import click

from edgeroute.cli_common import fail, log_options, require_port
from router.errors import EdgerouteError

# ---- edge -------------------------------------------------------------------------------


@click.group()
def edge() -> None:
    """The edge node."""


@edge.command("serve")
@click.option("--policy", "policy_path", required=True, type=click.Path(path_type=Path))
@click.option("--data-dir", required=True, type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--cloud-url", default=None, help="Overrides the policy's cloud.url.")
@click.option(
    "--reset-store",
    "reset_store",
    multiple=True,
    type=click.Choice(["queue", "results", "budget"]),
    help="If the node would refuse this store as unreadable, move it aside (renamed, not "
    "deleted) and start it empty; says what is lost. A healthy store is left alone. "
    "Repeatable.",
)
@log_options(0.01, "Share of requests that write a per-request log line (at info level).")
def edge_serve(
    policy_path: Path,
    data_dir: Path,
    host: str,
    port: int,
    cloud_url: str | None,
    reset_store: tuple[str, ...],
    log_level: str,
    log_sample_rate: float,
) -> None:
    """Serve the edge node's HTTP API until SIGTERM/SIGINT."""
    import uvicorn

    from edge_node.gc_tuning import tune_gc
    from edge_node.http.app import create_app
    from edge_node.settings import EdgeSettings
    from router.log_setup import configure_logging

    configure_logging(log_level)
    require_port(host, port)
    settings = EdgeSettings(
        policy_path=policy_path,
        data_dir=data_dir,
        host=host,
        port=port,
        cloud_url=cloud_url,
        log_level=log_level,
        log_sample_rate=log_sample_rate,
    )
    try:
        if reset_store:
            from edge_node.storage.store_reset import reset_stores

            for name, moved_to, said in reset_stores(data_dir, reset_store):
                if moved_to is None:
                    click.echo(f"not reset: the {name} store: {said}", err=True)
                else:
                    click.echo(
                        f"reset the {name} store: moved to {moved_to}; lost: {said}", err=True
                    )
        app = create_app(settings)
    except EdgerouteError as exc:
        fail(exc)
    tune_gc()  # after startup: models, policy and modules are frozen out of the collector
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
