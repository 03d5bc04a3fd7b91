"""The cloud re-ranking service's pure pieces with fakes: the TTL result store, the dedup
flow and per-task compute, and request parsing. (The real Serve app over HTTP:
tests/test_cloud_service.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from cloud_service.http_parsing import parse_rerank_body
from cloud_service.rerank_flow import Answer, answer_with_dedup, rerank_by_task
from cloud_service.result_store import (
    Outcome,
    StoredResult,
    StoreKey,
    TtlResultMap,
)
from router.errors import InputError, MalformedRequest, RequestTooLarge
from router.wire import RerankItem, RerankResult, WireCandidate

NODE = "test-node"


# --- fakes --------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeModel:
    """Answers label = str(len(inputs)); records every call; can be told to crash."""

    def __init__(self, task: str = "t", crash: bool = False) -> None:
        self.task = task
        self.version = "v1"
        self.calls: list[list[str]] = []
        self.crash = crash

    def rerank(self, items: Sequence[RerankItem]) -> list[Answer]:
        self.calls.append([it.request_id for it in items])
        if self.crash:
            raise RuntimeError("boom")
        return [
            RerankResult(
                request_id=it.request_id,
                task=it.task,
                label=str(len(it.inputs)),
                score=1.0,
                candidates=[WireCandidate(label="x", score=1.0)],
                model_version=self.version,
                scored="all_labels",
            )
            for it in items
        ]


def item(rid: str, inputs: list[float] | None = None, task: str = "t") -> RerankItem:
    return RerankItem(task=task, request_id=rid, inputs=inputs or [1.0, 2.0])


class MapStore:
    """The flow's `DedupStore` backed by a TtlResultMap (writes applied at once; `wait`
    advances the fake clock past the claim timeout, as if the claim holder had died)."""

    def __init__(self, claim_timeout_s: float = 10.0) -> None:
        self.clock = FakeClock()
        self.map = TtlResultMap(60.0, clock=self.clock, claim_timeout_s=claim_timeout_s)
        self.claim_timeout_s = claim_timeout_s
        self.waits = 0
        self.claims = 0

    async def claim(self, claims: list[tuple[StoreKey, str]]) -> list[Outcome]:
        self.claims += 1
        return self.map.claim_many(claims)

    async def wait(self, claims: list[tuple[StoreKey, str]]) -> list[Outcome]:
        self.waits += 1
        self.clock.now += self.claim_timeout_s
        return self.map.claim_many(claims)

    def put_later(self, entries: list[tuple[StoreKey, StoredResult]]) -> None:
        self.map.put_many(entries)

    def release_later(self, keys: list[StoreKey]) -> None:
        self.map.release_many(keys)


# --- TTL store ----------------------------------------------------------------------


def test_ttl_map_expires_entries_after_ttl() -> None:
    """An entry is returned before its TTL and gone once the clock passes it."""
    clock = FakeClock()
    store = TtlResultMap(10.0, clock=clock)
    stored = StoredResult("fp", {"a": 1})
    store.put_many([(("n", "r1"), stored)])
    clock.now += 9.9
    assert store.get_many([(("n", "r1"), "fp")]) == [stored]
    clock.now += 0.2
    assert store.get_many([(("n", "r1"), "fp")]) == [None]
    assert store.stats()["entries"] == 0


def test_ttl_map_counts_computations_hits_and_conflicts() -> None:
    """Puts count computations per key; matching gets count hits, mismatching ones conflicts."""
    store = TtlResultMap(10.0, clock=FakeClock())
    store.put_many([(("n", "r1"), StoredResult("fp", {}))])
    store.put_many([(("n", "r1"), StoredResult("fp", {})), (("n", "r2"), StoredResult("g", {}))])
    store.get_many([(("n", "r1"), "fp"), (("n", "r1"), "other"), (("m", "r1"), "fp")])
    assert store.computed_count(("n", "r1")) == 2
    assert store.stats() == {
        "computed_total": 3,
        "dedup_hits": 1,
        "conflicts": 1,
        "entries": 2,
        "computed_by_key_max": 2,
        "claims": 0,
        "claims_abandoned": 0,
    }


def test_ttl_map_put_over_another_item_keeps_the_first_and_counts_a_conflict() -> None:
    """A put whose fingerprint differs from the live entry's keeps the entry and counts a
    conflict; a put of the same item again counts a second computation."""
    m = TtlResultMap(60.0, clock=FakeClock())
    key = ("n", "a")
    m.put_many([(key, StoredResult("fp1", {"label": "1"}))])
    m.put_many([(key, StoredResult("fp2", {"label": "2"}))])
    assert m.get_many([(key, "fp1")]) == [StoredResult("fp1", {"label": "1"})]
    m.put_many([(key, StoredResult("fp1", {"label": "1"}))])
    stats = m.stats()
    assert stats["conflicts"] == 1 and stats["computed_total"] == 2
    assert stats["computed_by_key_max"] == 2


def test_ttl_map_drops_oldest_beyond_max_entries() -> None:
    """With max_entries=2, a third key evicts the oldest one."""
    store = TtlResultMap(10.0, clock=FakeClock(), max_entries=2)
    for rid in ("a", "b", "c"):
        store.put_many([(("n", rid), StoredResult(rid, {}))])
    got = store.get_many([(("n", r), r) for r in ("a", "b", "c")])
    assert [g is not None for g in got] == [False, True, True]


# --- dedup flow and per-task compute -------------------------------------------------


def test_dedup_flow_computes_each_key_once_and_marks_cached() -> None:
    """Repeats (across and within calls) are computed once and come back cached=True."""
    model = FakeModel()
    store = MapStore()

    async def compute(items: list[RerankItem]) -> list[Answer]:
        return rerank_by_task({"t": model}, items)

    async def run(items: list[RerankItem]) -> list[Answer]:
        return await answer_with_dedup(items, "n", store=store, compute=compute)

    first = asyncio.run(run([item("a"), item("a"), item("b", [1.0])]))
    second = asyncio.run(run([item("b", [1.0]), item("c")]))
    assert model.calls == [["a", "b"], ["c"]]
    assert [(r.request_id, getattr(r, "cached", None)) for r in first + second] == [
        ("a", False),
        ("a", True),
        ("b", False),
        ("b", True),
        ("c", False),
    ]
    assert isinstance(second[0], RerankResult) and second[0].label == "1"


def test_dedup_flow_reports_request_id_reused_for_other_item() -> None:
    """A known request_id sent with different inputs fails with request_id_conflict."""
    store = MapStore()
    model = FakeModel()

    async def compute(items: list[RerankItem]) -> list[Answer]:
        return rerank_by_task({"t": model}, items)

    async def run(items: list[RerankItem]) -> list[Answer]:
        return await answer_with_dedup(items, "n", store=store, compute=compute)

    asyncio.run(run([item("a", [1.0])]))
    again = asyncio.run(run([item("a", [2.0])]))
    assert not isinstance(again[0], RerankResult)
    assert again[0].error.code == "request_id_conflict"
    assert model.calls == [["a"]]


def test_first_send_is_computed_without_a_claim_and_answers_its_retries() -> None:
    """claim=False computes at once without asking the store, stores the result, and a
    later retry (claimed) of the same item is answered from it, cached."""
    store, model = MapStore(), FakeModel()

    async def compute(items: list[RerankItem]) -> list[Answer]:
        return rerank_by_task({"t": model}, items)

    first = asyncio.run(
        answer_with_dedup([item("a"), item("a")], "n", store=store, compute=compute, claim=False)
    )
    assert store.claims == 0 and model.calls == [["a"]]
    assert [getattr(r, "cached", None) for r in first] == [False, True]
    retry = asyncio.run(answer_with_dedup([item("a")], "n", store=store, compute=compute))
    assert store.claims == 1 and model.calls == [["a"]]
    assert isinstance(retry[0], RerankResult) and retry[0].cached
    assert store.map.stats()["computed_by_key_max"] == 1


def test_failed_first_send_releases_no_claim_it_does_not_hold() -> None:
    """A first send whose model fails leaves another caller's claim of the key in place."""
    store = MapStore()
    assert store.map.claim_many([(("n", "a"), "fp")]) == ["claimed"]  # a retry computing it

    async def compute(items: list[RerankItem]) -> list[Answer]:
        return rerank_by_task({"t": FakeModel(crash=True)}, items)

    out = asyncio.run(
        answer_with_dedup([item("a")], "n", store=store, compute=compute, claim=False)
    )
    assert not isinstance(out[0], RerankResult) and out[0].error.code == "internal_error"
    assert store.map.claim_many([(("n", "a"), "fp")]) == ["pending"]


def test_rerank_by_task_maps_unknown_task_and_model_crash_to_item_failures() -> None:
    """Unknown tasks and a crashing model fail only their own items, order kept."""
    good, bad = FakeModel("t"), FakeModel("u", crash=True)
    out = rerank_by_task(
        {"t": good, "u": bad}, [item("1", task="u"), item("2"), item("3", task="zz"), item("4")]
    )
    assert [r.request_id for r in out] == ["1", "2", "3", "4"]
    codes = [getattr(r, "error", None) and r.error.code for r in out]  # type: ignore[union-attr]
    assert codes == ["internal_error", None, "unknown_task", None]
    assert good.calls == [["2", "4"]]


# --- parsing and auth ---------------------------------------------------------------


def test_parse_rerank_body_accepts_item_and_batch() -> None:
    """A single item and a batch both parse to the items in order."""
    one = b'{"task":"t","request_id":"r1","inputs":[1]}'
    batch = (
        b'{"items":[{"task":"t","request_id":"a","inputs":[1]},'
        b'{"task":"t","request_id":"b","inputs":[2]}]}'
    )
    assert [i.request_id for i in parse_rerank_body(one, 10_000)] == ["r1"]
    assert [i.request_id for i in parse_rerank_body(batch, 10_000)] == ["a", "b"]


@pytest.mark.parametrize(
    ("body", "error", "field"),
    [
        (b"{not json", MalformedRequest, None),
        (b"[1, 2]", MalformedRequest, None),
        (b'{"task":"t","request_id":"r","inputs":[]}', InputError, "inputs"),
        (
            b'{"items":[{"task":"t","request_id":"bad id!","inputs":[1]}]}',
            InputError,
            "items.0.request_id",
        ),
        (b"x" * 2000, RequestTooLarge, None),
        (b'{"task":"t","request_id":"r","inputs":[1, true]}', InputError, "inputs.1"),
        (b'{"task":"t","request_id":"r","inputs":["1.5"]}', InputError, "inputs.0"),
    ],
)
def test_parse_rerank_body_rejects(body: bytes, error: type[Exception], field: str | None) -> None:
    """Bad JSON/non-objects are MalformedRequest, schema faults (booleans and numeric
    strings as inputs, as the edge refuses them) InputError naming the field."""
    with pytest.raises(error) as info:
        parse_rerank_body(body, 1024)
    assert getattr(info.value, "field", None) == field
