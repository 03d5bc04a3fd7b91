"""GroupCommitter: concurrent submits share commits, each caller gets its own outcome only
after its commit finished; a failing commit fails its whole group."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from edge_node.storage.group_commit import GroupCommitter


def test_concurrent_submits_are_grouped_and_answered_in_order() -> None:
    """16 threads submitting during a slow commit need far fewer commits than submits, and
    each caller returns its own value's result after the commit holding it finished."""
    groups: list[list[int]] = []
    committed: set[int] = set()
    lock = threading.Lock()

    def commit(values: Sequence[int]) -> list[int | BaseException]:
        time.sleep(0.02)  # the delay is the behaviour under test (a slow commit)
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


def test_waiters_are_woken_to_lead_the_next_group() -> None:
    """11 callers arriving while a lone first commit runs (groups capped at 2) all return:
    each finished group wakes the next leader, even though its own callers all returned."""
    groups: list[list[int]] = []
    first_running = threading.Event()

    def commit(values: Sequence[int]) -> list[int | BaseException]:
        first_running.set()
        time.sleep(0.05 if not groups else 0.002)  # the delay is the behaviour under test
        groups.append(list(values))
        return list(values)

    gc: GroupCommitter[int, int] = GroupCommitter(commit, max_group=2)
    results: dict[int, int] = {}

    def call(v: int) -> None:
        results[v] = gc.submit(v)

    threads = [threading.Thread(target=call, args=(0,), daemon=True)]
    threads[0].start()
    assert first_running.wait(5)
    threads += [threading.Thread(target=call, args=(v,), daemon=True) for v in range(1, 12)]
    for th in threads[1:]:
        th.start()
    deadline = time.monotonic() + 10
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
    assert results == {v: v for v in range(12)}
    assert groups[0] == [0] and max(len(g) for g in groups) <= 2


def test_submit_many_returns_each_outcome_in_order_while_others_submit() -> None:
    """submit_many's values commit in order with their own outcomes (errors returned, not
    raised), contiguously, alongside single submits from other threads."""
    groups: list[list[int]] = []

    def commit(values: Sequence[int]) -> list[int | BaseException]:
        time.sleep(0.005)  # the delay is the behaviour under test (a slow commit)
        groups.append(list(values))
        return [ValueError(v) if v < 0 else v * 10 for v in values]

    gc: GroupCommitter[int, int] = GroupCommitter(commit, max_group=8)
    with ThreadPoolExecutor(4) as pool:
        singles = [pool.submit(gc.submit, 1000 + i) for i in range(12)]
        out = gc.submit_many([1, -2, 3, 4, 5])
        assert [f.result() for f in singles] == [(1000 + i) * 10 for i in range(12)]
    assert out[0] == 10 and out[2:] == [30, 40, 50]
    assert isinstance(out[1], ValueError)
    flat = [v for g in groups for v in g]
    start = flat.index(1)
    assert flat[start : start + 5] == [1, -2, 3, 4, 5]
    assert gc.submit_many([]) == []


def test_submit_many_larger_than_a_group_spans_several_commits() -> None:
    """More values than max_group are committed over several groups, all answered."""
    sizes: list[int] = []

    def commit(values: Sequence[int]) -> list[int | BaseException]:
        sizes.append(len(values))
        return list(values)

    gc: GroupCommitter[int, int] = GroupCommitter(commit, max_group=4)
    assert gc.submit_many(list(range(10))) == list(range(10))
    assert sizes == [4, 4, 2]
