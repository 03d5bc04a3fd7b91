"""Helpers shared by the CLI command modules."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

import click

from router.errors import ConfigError, EdgerouteError, PolicyError
from router.log_setup import LOG_LEVELS

F = TypeVar("F", bound=Callable[..., object])


def fail(exc: EdgerouteError) -> NoReturn:
    """Print a user-fixable error (every issue of a PolicyError) and exit 2."""
    click.echo(str(exc) if isinstance(exc, PolicyError) else f"error: {exc.message}", err=True)
    sys.exit(2)


def os_error_text(exc: OSError) -> str:
    """One line for a file-system error: the path and the reason, no traceback."""
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


def require_port(host: str, port: int) -> None:
    """Raise ConfigError (field `port`) unless `host:port` can be listened on now, so a
    server refuses a taken port with one line before it loads anything."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another "
                "--port or stop what uses it",
                field="port",
            ) from None


class FriendlyGroup(click.Group):
    """The root command group: a user's mistake that surfaces as an EdgerouteError or an
    OSError (a missing or unreadable file, a bad path) ends the command with a one-line
    message and exit code 2, never a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        """Run the command; map EdgerouteError and OSError to a message and exit 2."""
        try:
            return super().invoke(ctx)
        except EdgerouteError as exc:
            fail(exc)
        except OSError as exc:
            click.echo(f"error: {os_error_text(exc)}", err=True)
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
