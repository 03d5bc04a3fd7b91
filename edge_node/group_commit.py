"""Group commit: concurrent callers that arrive while a commit runs share the next one.

A caller of `GroupCommitter.submit` either becomes the leader (no commit is running: it
commits everything pending, its own value included, in one call of `commit`, then wakes
the others; one of those still pending leads the next group) or waits for a leader to
pick its value up. Each caller returns only after the commit holding its
value has finished, with that value's own outcome, so a durable `commit` gives durable
returns. Thread-safe; no thread is started.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Slot(Generic[T, R]):
    __slots__ = ("done", "error", "result", "value")

    def __init__(self, value: T) -> None:
        self.value = value
        self.done = False
        self.result: R | None = None
        self.error: BaseException | None = None


class GroupCommitter(Generic[T, R]):
    """Batches `submit` calls from concurrent threads into calls of `commit`.

    `commit(values)` gets up to `max_group` values in arrival order and returns one outcome
    per value, in order: a result, or an exception instance that `submit` raises to that
    value's caller. If `commit` itself raises, every caller of the group gets that error.
    """

    def __init__(
        self,
        commit: Callable[[Sequence[T]], Sequence[R | BaseException]],
        *,
        max_group: int = 512,
    ) -> None:
        self._commit = commit
        self._max_group = max_group
        self._cond = threading.Condition()
        self._pending: list[_Slot[T, R]] = []
        self._leading = False

    def submit(self, value: T) -> R:
        """Commit `value` (alone or with others); returns its result once its commit has
        finished, or raises its error."""
        slot: _Slot[T, R] = _Slot(value)
        with self._cond:
            self._pending.append(slot)
            while not slot.done:
                if self._leading:
                    self._cond.wait()
                    continue
                self._leading = True
                group = self._pending[: self._max_group]
                del self._pending[: self._max_group]
                self._cond.release()
                try:
                    outcomes: Sequence[R | BaseException] = self._commit([s.value for s in group])
                    if len(outcomes) != len(group):
                        raise RuntimeError("commit returned a wrong number of outcomes")
                except BaseException as exc:
                    outcomes = [exc] * len(group)
                finally:
                    self._cond.acquire()
                for s, out in zip(group, outcomes, strict=True):
                    s.done = True
                    if isinstance(out, BaseException):
                        s.error = out
                    else:
                        s.result = out
                self._leading = False
                self._cond.notify_all()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]
