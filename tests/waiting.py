"""Tests wait on conditions, not on time: poll an observable predicate until it holds, with a
deadline. On a timeout `wait_until` (and `until`, on an event loop) raise an AssertionError
naming what was awaited; `holds_within` returns False, for an `assert ..., why` whose `why`
shows the state at the failure."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def holds_within(
    predicate: Callable[[], object],
    timeout_s: float = 10.0,
    interval_s: float = 0.01,
    ignore: tuple[type[BaseException], ...] = (),
) -> bool:
    """Call `predicate` every `interval_s` until it returns a true value (True) or
    `timeout_s` passed (False, after one last call at the deadline). An exception of a type
    in `ignore` (e.g. `httpx.HTTPError` while a server starts) counts as "not yet". For
    `assert holds_within(...), why` where `why` shows the state at the failure; else use
    `wait_until`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if predicate():
                return True
        except ignore:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def wait_until(
    predicate: Callable[[], object],
    timeout_s: float = 10.0,
    interval_s: float = 0.01,
    what: str = "the condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> bool:
    """`holds_within` that raises AssertionError naming `what` on a timeout; True otherwise."""
    if holds_within(predicate, timeout_s, interval_s, ignore):
        return True
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


async def until(
    predicate: Callable[[], object],
    timeout_s: float = 10.0,
    interval_s: float = 0.01,
    what: str = "the condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> bool:
    """`wait_until` for a test running on an event loop: `predicate` is a plain (sync) call,
    and the loop runs other tasks (the code under test) between the calls."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if predicate():
                return True
        except ignore:
            pass
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(interval_s)
