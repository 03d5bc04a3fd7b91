"""The `edgeroute` command line. Each command builds what it needs from its flags; errors
that users can fix are printed as messages (exit 1 or 2), never as tracebacks."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from router.errors import EdgerouteError, PolicyError


def _fail(exc: EdgerouteError) -> None:
    click.echo(f"error: {exc.message}" if not isinstance(exc, PolicyError) else str(exc), err=True)
    sys.exit(2)


@click.group()
@click.version_option(package_name="edgeroute")
def main() -> None:
    """edgeroute: hybrid edge-cloud inference routing driven by policy files."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


# ---- model ------------------------------------------------------------------------------


@main.group()
def model() -> None:
    """Model bundles."""


@model.command("build-demo")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Train/test split seed.")
def build_demo(out_dir: Path, seed: int) -> None:
    """Train the `digits` edge and cloud models and write their bundles to OUT_DIR."""
    from edgeroute.demo_models import build_demo_bundles

    build = build_demo_bundles(out_dir, seed=seed)
    click.echo(f"edge bundle:  {build.edge_dir}  (test accuracy {build.edge_accuracy:.4f})")
    click.echo(f"cloud bundle: {build.cloud_dir}  (test accuracy {build.cloud_accuracy:.4f})")


# ---- edge -------------------------------------------------------------------------------


@main.group()
def edge() -> None:
    """The edge node."""


@edge.command("serve")
@click.option("--policy", "policy_path", required=True, type=click.Path(path_type=Path))
@click.option("--data-dir", required=True, type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--cloud-url", default=None, help="Overrides the policy's cloud.url.")
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def edge_serve(
    policy_path: Path, data_dir: Path, host: str, port: int, cloud_url: str | None, log_level: str
) -> None:
    """Serve the edge node's HTTP API until SIGTERM/SIGINT."""
    import uvicorn

    from edge_node.http_app import create_app
    from edge_node.settings import EdgeSettings
    from router.log_setup import configure_logging

    configure_logging(log_level)
    settings = EdgeSettings(
        policy_path=policy_path,
        data_dir=data_dir,
        host=host,
        port=port,
        cloud_url=cloud_url,
        log_level=log_level,
    )
    try:
        app = create_app(settings)
    except EdgerouteError as exc:
        _fail(exc)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


# ---- cloud ------------------------------------------------------------------------------


@main.group()
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
def cloud_serve(
    port: int, host: str, bundles: Path, tokens_file: Path | None, ready_file: Path | None
) -> None:
    """Start a local Ray instance on 127.0.0.1 and serve the re-ranker until SIGTERM."""
    from cloud_service.server import run_cloud
    from cloud_service.settings import CloudServiceSettings
    from router.log_setup import configure_logging

    configure_logging("info")
    settings = CloudServiceSettings(
        bundles_dir=bundles, host=host, port=port, tokens_file=tokens_file
    )
    try:
        run_cloud(settings, ready_file=ready_file)
    except EdgerouteError as exc:
        _fail(exc)


# ---- policy -----------------------------------------------------------------------------


@main.group()
def policy() -> None:
    """Policy files: check and inspect."""


@policy.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def policy_check(files: tuple[Path, ...]) -> None:
    """Validate policy FILES; print every problem with file:line:column. Exit 1 on errors."""
    from edge_node.active_policy import load_policy_file

    failed = False
    for path in files:
        try:
            load_policy_file(path)
        except FileNotFoundError:
            click.echo(f"{path}: no such file", err=True)
            failed = True
        except PolicyError as exc:
            click.echo(str(exc), err=True)
            failed = True
        else:
            click.echo(f"{path}: ok")
    sys.exit(1 if failed else 0)


# ---- demo -------------------------------------------------------------------------------


@main.command("demo")
@click.option("--models", default="models", show_default=True, type=click.Path(path_type=Path))
@click.option("--data-dir", default="demo-data", show_default=True, type=click.Path(path_type=Path))
@click.option(
    "--report",
    default=None,
    type=click.Path(path_type=Path),
    help="Also write the figures as JSON here.",
)
@click.option(
    "--policy",
    "policy_path",
    default="policies/default.yaml",
    show_default=True,
    type=click.Path(path_type=Path),
)
def demo(models: Path, data_dir: Path, report: Path | None, policy_path: Path) -> None:
    """Run the whole product on the digits demo and print what happened."""
    from edgeroute.demo import run_demo

    try:
        ok = run_demo(
            models_dir=models, data_dir=data_dir, report_path=report, policy_path=policy_path
        )
    except EdgerouteError as exc:
        _fail(exc)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
