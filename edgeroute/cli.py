"""The `edgeroute` command line: the root group; each command group lives in its own module
(cli_model, cli_edge, cli_cloud, cli_policy, cli_queue) and builds what it needs from its
flags. Errors users can fix are printed as messages (exit 1 or 2), never as tracebacks."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from edgeroute.cli_cloud import cloud
from edgeroute.cli_common import FriendlyGroup, fail
from edgeroute.cli_edge import edge
from edgeroute.cli_eval import eval_cmd
from edgeroute.cli_model import model
from edgeroute.cli_policy import policy
from edgeroute.cli_queue import queue
from router.errors import EdgerouteError


@click.group(cls=FriendlyGroup)
@click.version_option(package_name="edgeroute")
def main() -> None:
    """edgeroute: hybrid edge-cloud inference routing driven by policy files."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


for _group in (model, edge, cloud, policy, queue, eval_cmd):
    main.add_command(_group)


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
        fail(exc)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
