"""Batched diskcache access (put_many / delete_many / get_many) against the pinned diskcache:
rows look exactly like Cache.set's, diskcache's own counters stay consistent, and every
write is atomic."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import diskcache
import pytest

from edge_node.storage.durable_cache import (
    compare_and_set,
    delete_many,
    get_many,
    open_durable_cache,
    put_many,
)


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[diskcache.Cache]:
    c = open_durable_cache(tmp_path / "c")
    yield c
    c.close()


def test_put_many_rows_read_like_cache_set(cache: diskcache.Cache) -> None:
    """Rows written by put_many are returned by get, iterkeys and len, and diskcache's
    consistency check (Settings count/size vs the Cache table) finds nothing wrong."""
    cache.set("k:set", b"by-set")
    put_many(cache, [(f"k:{i:03d}", f"v{i}".encode()) for i in range(50)] + [("n:int", 7)])
    assert cache.get("k:007") == b"v7" and cache.get("n:int") == 7
    assert len(cache) == 52
    assert sorted(cache.iterkeys()) == sorted(
        ["k:set", "n:int", *(f"k:{i:03d}" for i in range(50))]
    )
    assert cache.check() == []
    cols = "raw, expire_time, access_count, tag, size, mode, filename, typeof(value)"
    by_set = cache._sql(f"SELECT {cols} FROM Cache WHERE key = 'k:set'").fetchone()
    by_many = cache._sql(f"SELECT {cols} FROM Cache WHERE key = 'k:001'").fetchone()
    assert by_many == by_set


def test_put_many_overwrites_last_duplicate_wins(cache: diskcache.Cache) -> None:
    """put_many overwrites keys written by Cache.set or by itself; of duplicates within
    one call the last value wins; the row count does not grow."""
    cache.set("a", b"old")
    put_many(cache, [("a", b"new"), ("b", b"1"), ("b", b"2")])
    assert (cache.get("a"), cache.get("b"), len(cache)) == (b"new", b"2", 2)
    assert cache.check() == []


def test_inside_a_transaction_it_rolls_back_with_it(cache: diskcache.Cache) -> None:
    """put_many and delete_many inside cache.transact() join it: an error later in the
    block undoes them too."""
    put_many(cache, [("keep", b"1")])

    class Boom(Exception):
        pass

    with pytest.raises(Boom), cache.transact():
        put_many(cache, [(f"k{i}", b"x") for i in range(2500)])
        assert delete_many(cache, ["keep"]) == 1
        raise Boom
    assert len(cache) == 1 and cache.get("keep") == b"1" and cache.check() == []


def test_a_failing_statement_rolls_back_the_whole_write(cache: diskcache.Cache) -> None:
    """When SQLite refuses the second statement of a write, the first one is undone."""
    cache._sql(
        "CREATE TRIGGER refuse_k1500 BEFORE INSERT ON Cache WHEN NEW.key = 'k1500'"
        " BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    with pytest.raises(sqlite3.IntegrityError):
        put_many(cache, [(f"k{i}", b"x") for i in range(2000)])
    assert len(cache) == 0


def test_delete_many_counts_and_ignores_missing(cache: diskcache.Cache) -> None:
    """delete_many removes present keys (any number), ignores missing ones, returns the count."""
    put_many(cache, [(f"k{i}", b"x") for i in range(1500)])
    assert delete_many(cache, [f"k{i}" for i in range(1200)] + ["nope", "k0"]) == 1200
    assert len(cache) == 300 and cache.get("k1299") == b"x" and cache.get("k5") is None
    assert cache.check() == []


def test_get_many_returns_present_keys_only(cache: diskcache.Cache) -> None:
    """get_many returns the bytes of present keys across several SELECTs, skips the rest."""
    put_many(cache, [(f"k{i}", f"v{i}".encode()) for i in range(2100)])
    got = get_many(cache, [f"k{i}" for i in range(0, 2100, 3)] + ["absent"])
    assert len(got) == 700 and got["k2097"] == b"v2097" and "absent" not in got


def test_compare_and_set_writes_only_over_the_expected_bytes(cache: diskcache.Cache) -> None:
    """compare_and_set replaces a value only when it still equals `old`; a missing key or
    another value is left alone; what it wrote reads back through get_many and Cache.get."""
    assert compare_and_set(cache, "k", b"a", b"b") is False
    assert "k" not in cache
    put_many(cache, [("k", b"a")])
    assert compare_and_set(cache, "k", b"x", b"b") is False
    assert cache.get("k") == b"a"
    assert compare_and_set(cache, "k", b"a", b"longer value") is True
    assert get_many(cache, ["k"]) == {"k": b"longer value"} and cache.get("k") == b"longer value"
    assert compare_and_set(cache, "k", b"a", b"c") is False
    assert len(cache) == 1
