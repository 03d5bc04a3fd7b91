"""structlog configuration shared by the edge node, the cloud service and the CLI.

Fixed field names across the project: request_id, task, route, reason, latency_ms,
model_version, policy_revision. Payloads and inputs are never logged.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Literal, TextIO, get_args

import structlog

LogLevel = Literal["debug", "info", "warning", "error"]
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)
"""The log levels the CLI and the settings accept."""


def configure_logging(
    level: str = "info", *, json: bool = True, stream: TextIO | None = None
) -> None:
    """Configure structlog once for the process (idempotent; call from entry points only)."""
    lvl = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def sampler(rate: float, rng: Callable[[], float]) -> Callable[[], bool]:
    """A predicate true for about `rate` of calls (0: never, 1: always), drawing from
    `rng` (uniform in [0, 1)). Thread-safe if `rng` is; costs one call of `rng`."""
    if rate <= 0.0:
        return lambda: False
    if rate >= 1.0:
        return lambda: True
    return lambda: rng() < rate
