"""Group commit: concurrent callers that arrive while a commit runs share the next one.

A caller of `GroupCommitter.submit` either becomes the leader (no commit is running: it
commits everything pending, its own value included, in one call of `commit`, then wakes
the callers of that group and hands leadership to the oldest caller still pending) or
waits for a leader to pick its value up. Each caller returns only after the commit holding
its value has finished, with that value's own outcome, so a durable `commit` gives durable
returns. Only the threads that have something to do are woken (no thundering herd).
Thread-safe; no thread is started.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Slot(Generic[T, R]):
    __slots__ = ("done", "error", "result", "value", "wake")

    def __init__(self, value: T, wake: threading.Condition) -> None:
        self.value = value
        self.wake = wake  # shares the committer's lock; notified when done or to lead
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
        self._lock = threading.Lock()
        self._pending: list[_Slot[T, R]] = []
        self._leading = False

    def submit(self, value: T) -> R:
        """Commit `value` (alone or with others); returns its result once its commit has
        finished, or raises its error."""
        slot: _Slot[T, R] = _Slot(value, threading.Condition(self._lock))
        with self._lock:
            self._pending.append(slot)
            while not slot.done:
                if self._leading:
                    slot.wake.wait()
                    continue
                self._lead()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def submit_many(self, values: Sequence[T]) -> list[R | BaseException]:
        """Commit every value of `values` (in order, together with whatever else is
        pending); returns one outcome per value once every commit holding them has
        finished: its result, or the exception `submit` would have raised for it. Raises
        nothing itself. The values of one call stay contiguous and in order, and go in one
        commit when they fit in `max_group`. Thread-safe."""
        if not values:
            return []
        wake = threading.Condition(self._lock)
        slots: list[_Slot[T, R]] = [_Slot(v, wake) for v in values]
        with self._lock:
            self._pending.extend(slots)
            while not slots[-1].done:  # groups commit in arrival order: the last is last
                if self._leading:
                    wake.wait()
                    continue
                self._lead()
        return [s.error if s.error is not None else s.result for s in slots]  # type: ignore[misc]

    def _lead(self) -> None:
        """Commit the pending values (lock held on entry and exit, released meanwhile)."""
        self._leading = True
        group = self._pending[: self._max_group]
        del self._pending[: self._max_group]
        self._lock.release()
        try:
            outcomes: Sequence[R | BaseException] = self._commit([s.value for s in group])
            if len(outcomes) != len(group):
                raise RuntimeError("commit returned a wrong number of outcomes")
        except BaseException as exc:
            outcomes = [exc] * len(group)
        finally:
            self._lock.acquire()
        for s, out in zip(group, outcomes, strict=True):
            s.done = True
            if isinstance(out, BaseException):
                s.error = out
            else:
                s.result = out
            s.wake.notify()
        self._leading = False
        if self._pending:
            self._pending[0].wake.notify()  # the oldest waiter leads the next group
