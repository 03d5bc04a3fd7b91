"""`edgeroute policy ...`: check and inspect policy files."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from router.errors import PolicyError

# ---- policy -----------------------------------------------------------------------------


@click.group()
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
