"""GroupCommitter: concurrent submits share commits, each caller gets its own outcome only
after its commit finished; a failing commit fails its whole group."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from edge_node.group_commit import GroupCommitter


def test_concurrent_submits_are_grouped_and_answered_in_order() -> None:
    """16 threads submitting during a slow commit need far fewer commits than submits, and
    each caller returns its own value's result after the commit holding it finished."""
    groups: list[list[int]] = []
    committed: set[int] = set()
    lock = threading.Lock()

    def commit(values: Sequence[int]) -> list[int | BaseException]:
        time.sleep(0.02)
        with lock:
            groups.append(list(values))
            committed.update(values)
        return [v * 10 for v in values]

    gc: GroupCommitter[int, int] = GroupCommitter(commit)

    def one(v: int) -> int:
        r = gc.submit(v)
        with lock:
            assert v in committed  # durable before it returns
        return r

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(64)))
    assert results == [v * 10 for v in range(64)]
    assert sorted(v for g in groups for v in g) == list(range(64))
    assert len(groups) < 32


def test_per_value_errors_and_failing_commit() -> None:
    """An exception outcome is raised to that value's caller only; a commit that raises
    fails every caller of its group, and the next submit still works."""
    fail = {"all": False}

    def commit(values: Sequence[int]) -> list[int | BaseException]:
        if fail["all"]:
            raise OSError("disk gone")
        return [ValueError(v) if v < 0 else v for v in values]

    gc: GroupCommitter[int, int] = GroupCommitter(commit)
    assert gc.submit(3) == 3
    with pytest.raises(ValueError):
        gc.submit(-1)
    fail["all"] = True
    with pytest.raises(OSError, match="disk gone"):
        gc.submit(1)
    fail["all"] = False
    assert gc.submit(2) == 2
