"""The replica-side store client (`CoalescingStore`), the store actor's claims (`settle`,
`wait_claims`), and the dedup flow's claim handling with fakes. No Ray needed."""

from __future__ import annotations

import asyncio

import pytest

from cloud_service.rerank_flow import Answer, answer_with_dedup, rerank_by_task
from cloud_service.result_store import (
    CLAIMED,
    PENDING,
    Outcome,
    ResultStoreActor,
    StoredResult,
    StoreKey,
    TtlResultMap,
)
from cloud_service.store_client import CoalescingStore
from router.wire import RerankItem, RerankResult
from tests.test_cloud_core import FakeClock, FakeModel, MapStore, item
from tests.waiting import until


class RecordingSettle:
    """An in-memory `settle` (the real actor body) that records each call's sizes and can be
    made slow or failing."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.actor = ResultStoreActor(ttl_s=60.0, max_entries=100)
        self.calls: list[tuple[int, int, int]] = []
        self.delay_s = delay_s
        self.fail = fail

    async def __call__(
        self,
        puts: list[tuple[StoreKey, StoredResult]],
        releases: list[StoreKey],
        claims: list[tuple[StoreKey, str]],
    ) -> list[Outcome]:
        self.calls.append((len(puts), len(releases), len(claims)))
        await asyncio.sleep(self.delay_s)  # the delay is the behaviour under test
        if self.fail:
            raise ConnectionError("store down")
        return await self.actor.settle(puts, releases, claims)


def test_settle_applies_puts_and_releases_before_claims() -> None:
    """One actor call stores the puts, drops released claims, then claims atomically."""
    actor = ResultStoreActor(ttl_s=60.0, max_entries=10)
    stored = StoredResult("fp", {"x": 1})

    async def run() -> tuple[list[Outcome], list[Outcome]]:
        first = await actor.settle([], [], [(("n", "r"), "fp"), (("n", "b"), "fp")])
        second = await actor.settle(
            [(("n", "a"), stored)],
            [("n", "r")],
            [(("n", "a"), "fp"), (("n", "r"), "fp"), (("n", "b"), "fp"), (("n", "c"), "fp")],
        )
        return first, second

    first, second = asyncio.run(run())
    assert first == [CLAIMED, CLAIMED]
    assert second == [stored, CLAIMED, PENDING, CLAIMED]
    assert asyncio.run(actor.stats())["computed_total"] == 1


def test_lone_claims_go_out_at_once_and_puts_ride_with_the_next_claim() -> None:
    """A lone claim never waits for company; a put is not sent on its own while a claim
    follows within the flush delay: it rides with that claim, applied before it."""
    ex = RecordingSettle()
    store = CoalescingStore(ex, flush_delay_s=1.0)

    async def run() -> list[Outcome]:
        assert await store.claim([(("n", "a"), "fp")]) == [CLAIMED]
        store.put_later([(("n", "a"), StoredResult("fp", {}))])
        assert store.queued_writes == 1
        return await store.claim([(("n", "a"), "fp")])

    assert asyncio.run(run()) == [StoredResult("fp", {})]
    assert ex.calls == [(0, 0, 1), (1, 0, 1)] and store.calls == 2


def test_queued_put_goes_out_alone_after_the_flush_delay() -> None:
    """Without a following claim, a queued put is sent by itself once the delay passed."""
    ex = RecordingSettle()
    store = CoalescingStore(ex, flush_delay_s=0.01)

    async def run() -> None:
        store.put_later([(("n", "a"), StoredResult("fp", {}))])
        store.release_later([("n", "b")])
        await until(lambda: ex.calls, timeout_s=5.0, what="the queued writes' call")

    asyncio.run(run())
    assert ex.calls == [(1, 1, 0)] and store.queued_writes == 0


def test_flush_sends_queued_writes_now_and_waits_for_a_call_in_flight() -> None:
    """`flush` returns only once the queued writes are applied, without waiting for the
    flush delay, also when a claim call is in flight as it is called."""
    ex = RecordingSettle(delay_s=0.02)
    store = CoalescingStore(ex, flush_delay_s=60.0)

    async def run() -> float:
        loop = asyncio.get_running_loop()
        claim = asyncio.create_task(store.claim([(("n", "b"), "fp")]))
        # the claim call is in flight (it takes 20 ms): settle has recorded it
        await until(lambda: ex.calls, interval_s=0, what="the claim call to start")
        store.put_later([(("n", "a"), StoredResult("fp", {}))])
        started = loop.time()
        await store.flush()
        assert await claim == [CLAIMED]
        return loop.time() - started

    took = asyncio.run(run())
    assert ex.calls == [(0, 0, 1), (1, 0, 0)] and store.queued_writes == 0
    assert asyncio.run(ex.actor.computed_counts([("n", "a")])) == [1]
    assert took < 5.0


def test_concurrent_callers_share_calls_and_get_their_own_answers() -> None:
    """Callers arriving together share one call; answers stay theirs."""
    ex = RecordingSettle(delay_s=0.01)
    store = CoalescingStore(ex)
    seeded = [(("n", f"s{i}"), StoredResult(f"fp{i}", {"i": i})) for i in range(5)]
    asyncio.run(ex.actor.put_many(seeded))

    async def run() -> list[list[Outcome]]:
        store.put_later([(("n", f"p{i}"), StoredResult("p", {})) for i in range(3)])
        claims = [
            store.claim([(("n", f"s{i}"), f"fp{i}"), (("n", f"new{i}"), "x")]) for i in range(5)
        ]
        return list(await asyncio.gather(*claims))

    answers = asyncio.run(run())
    assert answers == [[seeded[i][1], CLAIMED] for i in range(5)]
    assert ex.calls == [(3, 0, 10)]  # everyone who came before the call went out shares it
    assert asyncio.run(ex.actor.stats())["entries"] == 8


def test_callers_arriving_during_a_call_go_together_in_the_next() -> None:
    """While one call is in flight, new callers queue and share the following call."""
    ex = RecordingSettle(delay_s=0.02)
    store = CoalescingStore(ex)

    async def run() -> None:
        first = asyncio.create_task(store.claim([(("n", "a"), "fp")]))
        # the first call is now in flight: settle has recorded it
        await until(lambda: ex.calls, interval_s=0, what="the first call to start")
        await asyncio.gather(first, *(store.claim([(("n", str(i)), "fp")]) for i in range(4)))

    asyncio.run(run())
    assert ex.calls == [(0, 0, 1), (0, 0, 4)]


def test_busy_replica_lingers_so_claims_share_a_call() -> None:
    """When the replica reports other requests in progress, claims wait up to linger_s
    for company and go out together; an idle replica's claim goes out at once."""
    ex = RecordingSettle()
    busy = [True]
    asked: list[bool] = []

    def busy_now() -> bool:
        """The replica's busy flag; each answer is kept in `asked` (a claim reached the store)."""
        asked.append(busy[0])
        return busy[0]

    store = CoalescingStore(ex, linger_s=0.05, busy=busy_now)

    async def run() -> None:
        first = asyncio.create_task(store.claim([(("n", "a"), "fp")]))
        await until(lambda: asked, interval_s=0, what="the first claim to linger")
        await asyncio.gather(first, store.claim([(("n", "b"), "fp")]))
        busy[0] = False
        await store.claim([(("n", "c"), "fp")])

    asyncio.run(run())
    assert ex.calls == [(0, 0, 2), (0, 0, 1)]


def test_failed_call_fails_every_caller_that_shared_it_and_later_calls_still_run() -> None:
    """A store failure reaches each caller of that call and the write-error hook; the
    next call is tried afresh."""
    ex = RecordingSettle(delay_s=0.005, fail=True)
    errors: list[BaseException] = []
    store = CoalescingStore(ex, on_write_error=errors.append)

    async def run() -> list[object]:
        store.put_later([(("n", "p"), StoredResult("p", {}))])
        return await asyncio.gather(
            *(store.claim([(("n", str(i)), "fp")]) for i in range(3)), return_exceptions=True
        )

    assert all(isinstance(r, ConnectionError) for r in asyncio.run(run()))
    assert len(ex.calls) == 1 and len(errors) == 1
    ex.fail = False
    assert asyncio.run(store.claim([(("n", "0"), "fp")])) == [CLAIMED]


def test_ttl_map_claims_pending_release_and_abandoned_takeover() -> None:
    """A claimed key is PENDING to others until put (then the result), released (then
    claimable) or abandoned after claim_timeout_s (then taken over and counted)."""
    clock = FakeClock()
    m = TtlResultMap(60.0, clock=clock, claim_timeout_s=5.0)
    k = (("n", "a"), "fp")
    assert m.claim_many([k, k]) == [CLAIMED, PENDING]
    m.put_many([(("n", "a"), StoredResult("fp", {}))])
    assert m.claim_many([k]) == [StoredResult("fp", {})]
    b = (("n", "b"), "fp")
    assert m.claim_many([b]) == [CLAIMED]
    m.release_many([("n", "b")])
    assert m.claim_many([b]) == [CLAIMED]
    clock.now += 4.9
    assert m.claim_many([b]) == [PENDING]
    clock.now += 0.2
    assert m.claim_many([b]) == [CLAIMED]
    assert m.stats()["claims_abandoned"] == 1 and m.stats()["claims"] == 1


def test_actor_wait_returns_the_result_put_by_the_claim_holder() -> None:
    """A waiter on a claimed key gets the holder's result as soon as it is put, and the
    key is computed once."""
    actor = ResultStoreActor(ttl_s=60.0, max_entries=10, claim_timeout_s=30.0)
    k = (("n", "a"), "fp")
    stored = StoredResult("fp", {"label": "7"})

    async def run() -> list[Outcome]:
        assert await actor.settle([], [], [k]) == [CLAIMED]
        waiter = asyncio.create_task(actor.wait_claims([k], 30.0))
        # the waiter ran: it got PENDING and now waits on the actor's change event
        await until(lambda: actor._changed is not None, interval_s=0, what="the waiter to wait")
        assert not waiter.done()
        await actor.settle([(("n", "a"), stored)], [], [])
        return await asyncio.wait_for(waiter, 5.0)

    assert asyncio.run(run()) == [stored]
    assert asyncio.run(actor.computed_counts([("n", "a")])) == [1]


def test_actor_wait_takes_over_an_abandoned_claim_after_its_timeout() -> None:
    """A claim never put nor released is granted to a waiter once claim_timeout_s passed."""
    actor = ResultStoreActor(ttl_s=60.0, max_entries=10, claim_timeout_s=0.05)
    k = (("n", "a"), "fp")

    async def run() -> list[Outcome]:
        assert await actor.settle([], [], [k]) == [CLAIMED]
        return await asyncio.wait_for(actor.wait_claims([k], 5.0), 5.0)

    assert asyncio.run(run()) == [CLAIMED]
    assert asyncio.run(actor.stats())["claims_abandoned"] == 1


def test_dedup_flow_waits_for_pending_keys_and_computes_on_takeover() -> None:
    """An item whose key another caller holds is not computed while that claim lives; when
    the claim is abandoned, the flow takes it over and computes it (once)."""
    model = FakeModel()
    store = MapStore(claim_timeout_s=5.0)

    async def compute(items: list[RerankItem]) -> list[Answer]:
        return rerank_by_task({"t": model}, items)

    store.map.claim_many([(("n", "a"), "x")])  # another replica claimed a, then died
    got = asyncio.run(answer_with_dedup([item("a"), item("b")], "n", store=store, compute=compute))
    assert [getattr(r, "cached", None) for r in got] == [False, False]
    assert model.calls == [["b"], ["a"]] and store.waits == 1
    assert store.map.stats()["claims"] == 0 and store.map.computed_count(("n", "a")) == 1


def test_dedup_flow_releases_claims_of_failed_items() -> None:
    """A failed computation is not stored and its claim is released, so a retry computes."""
    model = FakeModel(crash=True)
    store = MapStore()

    async def compute(items: list[RerankItem]) -> list[Answer]:
        return rerank_by_task({"t": model}, items)

    got = asyncio.run(answer_with_dedup([item("a")], "n", store=store, compute=compute))
    assert not isinstance(got[0], RerankResult)
    assert store.map.stats()["claims"] == 0
    model.crash = False
    again = asyncio.run(answer_with_dedup([item("a")], "n", store=store, compute=compute))
    assert isinstance(again[0], RerankResult) and not again[0].cached


def test_dedup_flow_keys_each_item_by_its_own_node() -> None:
    """With one node per item, the same request_id of two nodes is computed for each node."""
    model = FakeModel()
    store = MapStore()

    async def compute(items: list[RerankItem]) -> list[Answer]:
        return rerank_by_task({"t": model}, items)

    async def run(nodes: list[str]) -> list[Answer]:
        items = [item("a") for _ in nodes]
        return await answer_with_dedup(items, nodes, store=store, compute=compute)

    first = asyncio.run(run(["n1", "n2", "n1"]))
    assert [getattr(r, "cached", None) for r in first] == [False, False, True]
    assert model.calls == [["a", "a"]]
    again = asyncio.run(run(["n2"]))
    assert isinstance(again[0], RerankResult) and again[0].cached
    with pytest.raises(ValueError):
        asyncio.run(answer_with_dedup([item("a"), item("b")], ["n1"], store=store, compute=compute))


def test_ready_group_batches_only_calls_that_arrive_together() -> None:
    """Calls reaching the step in the same loop turn all run `together`; a call alone at
    the step (before or after them) runs `alone`."""
    from cloud_service.rerank_flow import ReadyGroup

    group = ReadyGroup()
    paths: list[str] = []

    async def call(name: str) -> str:
        async def alone() -> str:
            paths.append(f"{name}:alone")
            return name

        async def together() -> str:
            # still counted while it runs (the delay is the behaviour under test)
            await asyncio.sleep(0.01)
            paths.append(f"{name}:together")
            return name

        return await group.run(alone, together)

    async def run() -> None:
        await call("first")
        await asyncio.gather(call("a"), call("b"), call("c"))
        await call("last")

    asyncio.run(run())
    assert paths[0] == "first:alone" and paths[-1] == "last:alone"
    assert sorted(paths[1:4]) == ["a:together", "b:together", "c:together"]
    assert group.ready == 0
