"""The replica-side store client (`CoalescingStore`), the store actor's `exchange`, and the
dedup flow with one node per item (as `@serve.batch` gathers them). No Ray needed."""

from __future__ import annotations

import asyncio

import pytest

from cloud_service.rerank_flow import Answer, answer_with_dedup, rerank_by_task
from cloud_service.result_store import ResultStoreActor, StoredResult, StoreKey
from cloud_service.store_client import CoalescingStore
from router.wire import RerankItem, RerankResult
from tests.test_cloud_service import FakeModel, MapStore, item


class RecordingExchange:
    """An in-memory `exchange` that records each call and can be made slow or failing."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.actor = ResultStoreActor(ttl_s=60.0, max_entries=100)
        self.calls: list[tuple[int, int]] = []
        self.delay_s = delay_s
        self.fail = fail

    async def __call__(
        self, puts: list[tuple[StoreKey, StoredResult]], lookups: list[tuple[StoreKey, str]]
    ) -> list[StoredResult | None]:
        self.calls.append((len(puts), len(lookups)))
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise ConnectionError("store down")
        return self.actor.exchange(puts, lookups)


def test_exchange_applies_puts_before_lookups() -> None:
    """One actor call stores the puts and then answers lookups that see them."""
    actor = ResultStoreActor(ttl_s=60.0, max_entries=10)
    stored = StoredResult("fp", {"x": 1})
    assert actor.exchange([(("n", "a"), stored)], [(("n", "a"), "fp"), (("n", "b"), "fp")]) == [
        stored,
        None,
    ]
    assert actor.stats()["computed_total"] == 1


def test_lone_calls_go_out_at_once_one_call_each() -> None:
    """Sequential callers never wait for company: each lookup/put is its own call."""
    ex = RecordingExchange()
    store = CoalescingStore(ex)

    async def run() -> list[StoredResult | None]:
        await store.put([(("n", "a"), StoredResult("fp", {}))])
        return await store.lookup([(("n", "a"), "fp")])

    assert asyncio.run(run()) == [StoredResult("fp", {})]
    assert ex.calls == [(1, 0), (0, 1)] and store.calls == 2


def test_concurrent_callers_share_calls_and_get_their_own_answers() -> None:
    """Callers arriving while a call is in flight share the next call; answers stay theirs."""
    ex = RecordingExchange(delay_s=0.01)
    store = CoalescingStore(ex)
    seeded = [(("n", f"s{i}"), StoredResult(f"fp{i}", {"i": i})) for i in range(5)]
    ex.actor.put_many(seeded)

    async def run() -> list[list[StoredResult | None]]:
        lookups = [
            store.lookup([(("n", f"s{i}"), f"fp{i}"), (("n", "none"), "x")]) for i in range(5)
        ]
        puts = [store.put([(("n", f"p{i}"), StoredResult("p", {}))]) for i in range(3)]
        got = await asyncio.gather(*lookups, *puts)
        return list(got[:5])

    answers = asyncio.run(run())
    assert answers == [[seeded[i][1], None] for i in range(5)]
    assert ex.calls == [(3, 10)]  # everyone who came before the call went out shares it
    assert ex.actor.stats()["entries"] == 8


def test_callers_arriving_during_a_call_go_together_in_the_next() -> None:
    """While one call is in flight, new callers queue and share the following call."""
    ex = RecordingExchange(delay_s=0.02)
    store = CoalescingStore(ex)

    async def run() -> None:
        first = asyncio.create_task(store.lookup([(("n", "a"), "fp")]))
        await asyncio.sleep(0.005)  # the first call is now in flight
        await asyncio.gather(first, *(store.lookup([(("n", str(i)), "fp")]) for i in range(4)))

    asyncio.run(run())
    assert ex.calls == [(0, 1), (0, 4)]


def test_failed_call_fails_every_caller_that_shared_it_and_later_calls_still_run() -> None:
    """A store failure reaches each caller of that call; the next call is tried afresh."""
    ex = RecordingExchange(delay_s=0.005, fail=True)
    store = CoalescingStore(ex)

    async def run() -> list[object]:
        return await asyncio.gather(
            *(store.lookup([(("n", str(i)), "fp")]) for i in range(3)), return_exceptions=True
        )

    assert all(isinstance(r, ConnectionError) for r in asyncio.run(run()))
    assert len(ex.calls) == 1
    ex.fail = False
    assert asyncio.run(store.lookup([(("n", "0"), "fp")])) == [None]


def test_dedup_flow_keys_each_item_by_its_own_node() -> None:
    """With one node per item, the same request_id of two nodes is computed for each node."""
    model = FakeModel()
    store = MapStore()

    async def compute(items: list[RerankItem]) -> list[Answer]:
        return rerank_by_task({"t": model}, items)

    async def run(nodes: list[str]) -> list[Answer]:
        items = [item("a") for _ in nodes]
        return await answer_with_dedup(
            items, nodes, lookup=store.lookup, store=store.store, compute=compute
        )

    first = asyncio.run(run(["n1", "n2", "n1"]))
    assert [getattr(r, "cached", None) for r in first] == [False, False, True]
    assert model.calls == [["a", "a"]]
    again = asyncio.run(run(["n2"]))
    assert isinstance(again[0], RerankResult) and again[0].cached
    with pytest.raises(ValueError):
        asyncio.run(
            answer_with_dedup(
                [item("a"), item("b")], ["n1"], lookup=store.lookup, store=store.store,
                compute=compute,
            )
        )  # fmt: skip
