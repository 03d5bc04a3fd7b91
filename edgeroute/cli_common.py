"""Helpers shared by the CLI command modules."""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from router.errors import EdgerouteError, PolicyError


def fail(exc: EdgerouteError) -> NoReturn:
    """Print a user-fixable error (every issue of a PolicyError) and exit 2."""
    click.echo(str(exc) if isinstance(exc, PolicyError) else f"error: {exc.message}", err=True)
    sys.exit(2)
