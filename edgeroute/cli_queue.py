"""`edgeroute queue ...`: inspect and operate the durable queue of a data dir."""

from __future__ import annotations

import click


@click.group()
def queue() -> None:
    """The durable queue (stats, list, drain, purge)."""
