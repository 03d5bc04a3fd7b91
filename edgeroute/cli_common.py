"""Helpers shared by the CLI command modules."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

import click

from router.errors import EdgerouteError, PolicyError
from router.log_setup import LOG_LEVELS

F = TypeVar("F", bound=Callable[..., object])


def fail(exc: EdgerouteError) -> NoReturn:
    """Print a user-fixable error (every issue of a PolicyError) and exit 2."""
    click.echo(str(exc) if isinstance(exc, PolicyError) else f"error: {exc.message}", err=True)
    sys.exit(2)


def log_options(sample_default: float, sample_help: str) -> Callable[[F], F]:
    """The `--log-level` and `--log-sample-rate` options of a serving command (passed as
    `log_level` and `log_sample_rate`)."""

    def apply(command: F) -> F:
        command = click.option(
            "--log-sample-rate",
            default=sample_default,
            show_default=True,
            type=click.FloatRange(0.0, 1.0),
            help=sample_help,
        )(command)
        return click.option(
            "--log-level",
            default="info",
            show_default=True,
            type=click.Choice(LOG_LEVELS),
            help="Level of the JSON log lines.",
        )(command)

    return apply
