"""The re-rank request flow, free of Ray: claim, compute the claimed items, store, merge.

This is the cloud's dedup module, the first-send optimisation included (`ReplicaDedup`:
a call the sender marks as a first send skips the claim). `cloud_service.deployment`
plugs the Ray pieces (the store actor through `shared_store.SharedStore`, the
`@serve.batch` method of `replica_compute.ReplicaCompute`) into these functions; tests
plug in fakes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol, TypeVar

import structlog

from cloud_service.result_store import (
    CLAIMED,
    PENDING,
    Outcome,
    StoredResult,
    StoreKey,
    item_fingerprint,
)
from router.wire import REQUEST_ID_CONFLICT, RerankFailure, RerankItem, RerankResult, WireError

Answer = RerankResult | RerankFailure
T = TypeVar("T")
Compute = Callable[[list[RerankItem]], Awaitable[list[Answer]]]
MAX_WAIT_ROUNDS = 3
"""`DedupStore.wait` calls per item before it is computed without its claim (each wait
lasts up to the claim timeout, so this is reached only if the store keeps answering PENDING)."""


class DedupStore(Protocol):
    """The idempotency store as the flow sees it (`cloud_service.shared_store.SharedStore`
    adapts the shared actor through `CoalescingStore`; tests use `TtlResultMap`)."""

    async def claim(self, claims: list[tuple[StoreKey, str]]) -> list[Outcome]:
        """`TtlResultMap.claim_many` semantics."""
        ...

    async def wait(self, claims: list[tuple[StoreKey, str]]) -> list[Outcome]:
        """Claim again once the PENDING keys are settled (`ResultStoreActor.wait_claims`)."""
        ...

    def put_later(self, entries: list[tuple[StoreKey, StoredResult]]) -> None:
        """Store computed results (may return before the store has them)."""
        ...

    def release_later(self, keys: list[StoreKey]) -> None:
        """Drop the claims of keys whose computation failed (may return before it is done)."""
        ...


_log = structlog.get_logger("cloud_service.rerank")


class RerankModel(Protocol):
    """What the flow needs of a cloud model (`cloud_service.model.CloudModel` fits)."""

    @property
    def task(self) -> str: ...

    @property
    def version(self) -> str: ...

    def rerank(self, items: Sequence[RerankItem]) -> list[Answer]: ...


def failure(item: RerankItem, code: str, message: str, field: str | None = None) -> RerankFailure:
    """A per-item failure for `item`."""
    return RerankFailure(
        request_id=item.request_id,
        task=item.task,
        error=WireError(code=code, message=message, field=field),
    )


def rerank_by_task(models: Mapping[str, RerankModel], items: Sequence[RerankItem]) -> list[Answer]:
    """Answers for `items` in order: one model call per task present; unknown tasks and
    model crashes become per-item failures (never raises for a single bad item or task).

    Thread-safe if the models are (onnxruntime sessions are).
    """
    answers: list[Answer | None] = [None] * len(items)
    by_task: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_task.setdefault(item.task, []).append(i)
    for task, indexes in by_task.items():
        model = models.get(task)
        if model is None:
            for i in indexes:
                answers[i] = failure(
                    items[i], "unknown_task", f"task {task!r} is not served here", "task"
                )
            continue
        group = [items[i] for i in indexes]
        try:
            got = model.rerank(group)
            if len(got) != len(group):
                raise RuntimeError(f"model returned {len(got)} answers for {len(group)} items")
        except Exception as exc:  # a model bug must not fail the other tasks' items
            _log.error("rerank_model_failed", task=task, reason=type(exc).__name__)
            got = [
                failure(it, "internal_error", "the cloud model failed on this batch")
                for it in group
            ]
        for i, answer in zip(indexes, got, strict=True):
            answers[i] = answer
    return _filled(answers)


async def answer_with_dedup(
    items: Sequence[RerankItem],
    node_id: str | Sequence[str],
    *,
    store: DedupStore,
    compute: Compute,
    claim: bool = True,
) -> list[Answer]:
    """Answers for `items` in order, computing only those not already answered or being
    computed for their node (`node_id`: one node for every item, or one per item).

    Each key is claimed first (`store.claim`, one awaited round trip): stored results come
    back with `cached=True`; claimed items are computed (one `compute` call) and their
    successful results handed to `store.put_later` (failures to `store.release_later`)
    before this returns; items whose key another caller is computing wait for that result
    (`store.wait`), or compute it themselves when granted the claim after it was abandoned
    (or when the store still says pending after `MAX_WAIT_ROUNDS` waits). A request_id seen
    before with a different item (task, inputs or candidates) fails with code
    `request_id_conflict`; duplicates inside one call are computed once. Raises ValueError
    if a node list's length differs from items'; the store's exceptions propagate.

    `claim=False` is for items the sender promises were never sent before (first send):
    they are computed without asking the store (no round trip), and their results are
    handed to `store.put_later` all the same, so a later retry of them is answered from
    the store. Nothing is released for them (they hold no claim); duplicates inside the
    call are still computed once.
    """
    nodes = [node_id] * len(items) if isinstance(node_id, str) else list(node_id)
    if len(nodes) != len(items):
        raise ValueError(f"{len(nodes)} node ids for {len(items)} items")
    fingerprints = [item_fingerprint(it.task, it.inputs or (), it.candidates) for it in items]
    keys: list[StoreKey] = [(node, it.request_id) for node, it in zip(nodes, items, strict=True)]
    answers: list[Answer | None] = [None] * len(items)
    first: dict[StoreKey, int] = {}
    repeats: list[int] = []
    asked: list[int] = []
    for i, key in enumerate(keys):
        if key in first:
            repeats.append(i)
        else:
            first[key] = i
            asked.append(i)
    if claim:
        outcomes = await store.claim([(keys[i], fingerprints[i]) for i in asked])
    else:
        outcomes = [CLAIMED] * len(asked)
    for round_ in range(MAX_WAIT_ROUNDS + 1):
        to_compute: list[int] = []
        waiting: list[int] = []
        for i, outcome in zip(asked, outcomes, strict=True):
            if outcome == CLAIMED:
                to_compute.append(i)
            elif outcome == PENDING:
                waiting.append(i)
            elif isinstance(outcome, StoredResult):
                if outcome.fingerprint == fingerprints[i]:
                    answers[i] = RerankResult.model_validate({**outcome.result, "cached": True})
                else:
                    answers[i] = _conflict(items[i])
        if round_ == MAX_WAIT_ROUNDS:  # still pending: compute without the claim
            to_compute, waiting = to_compute + waiting, []
        if to_compute:
            await _settle(items, keys, fingerprints, to_compute, answers, store, compute, claim)
        if not waiting:
            break
        asked = waiting
        outcomes = await store.wait([(keys[i], fingerprints[i]) for i in waiting])
    for i in repeats:
        j = first[keys[i]]
        answer = answers[j]
        if fingerprints[i] != fingerprints[j]:
            answers[i] = _conflict(items[i])
        elif isinstance(answer, RerankResult):
            answers[i] = answer.model_copy(update={"cached": True})
        else:
            answers[i] = answer
    return _filled(answers)


FIRST_SEND_MARK = "1"
"""The value of header `X-Edgeroute-First-Send` (`router.wire.FIRST_SEND_HEADER`) that
marks a call as a first send; any other value, or none, does not."""


class ReplicaDedup:
    """One replica's dedup handling: `answer_with_dedup` over `store`, and the first-send
    optimisation.

    A call is a first send when `trust_first_send` is on and the sender marked it with
    `FIRST_SEND_MARK` (the edge node does so only for the first try of request ids it
    generated itself, so nothing can have sent them before): its items are computed without
    a claim (`claim=False`: no store round trip) and their results stored for later
    retries. Every other call is claimed. `first_send_items` counts the items received in
    first sends (repeats inside such a call and failed items included).
    """

    def __init__(self, store: DedupStore, *, trust_first_send: bool) -> None:
        self.store = store
        self._trust_first_send = trust_first_send
        self.first_send_items = 0

    def is_first_send(self, mark: str | None) -> bool:
        """Whether a call whose first-send header holds `mark` (None: absent) skips the claim."""
        return self._trust_first_send and mark == FIRST_SEND_MARK

    async def answer(
        self,
        items: Sequence[RerankItem],
        node_id: str,
        *,
        compute: Compute,
        first_send_mark: str | None,
    ) -> list[Answer]:
        """`answer_with_dedup(items, node_id)` through `compute`, claimed unless
        `first_send_mark` makes the call a first send (see the class docstring)."""
        first_send = self.is_first_send(first_send_mark)
        if first_send:
            self.first_send_items += len(items)
        return await answer_with_dedup(
            items, node_id, store=self.store, compute=compute, claim=not first_send
        )


async def _settle(
    items: Sequence[RerankItem],
    keys: Sequence[StoreKey],
    fingerprints: Sequence[str],
    indexes: list[int],
    answers: list[Answer | None],
    store: DedupStore,
    compute: Compute,
    claimed: bool,
) -> None:
    try:
        computed = await compute([items[i] for i in indexes])
    except BaseException:
        if claimed:
            store.release_later([keys[i] for i in indexes])
        raise
    to_store: list[tuple[StoreKey, StoredResult]] = []
    failed: list[StoreKey] = []
    for i, answer in zip(indexes, computed, strict=True):
        answers[i] = answer
        if isinstance(answer, RerankResult):
            to_store.append(
                (keys[i], StoredResult(fingerprints[i], answer.model_dump(mode="json")))
            )
        else:
            failed.append(keys[i])
    store.put_later(to_store)
    if claimed:
        store.release_later(failed)


def _conflict(item: RerankItem) -> RerankFailure:
    return failure(
        item,
        REQUEST_ID_CONFLICT,
        "this request_id was already used for a different item",
        "request_id",
    )


def _filled(answers: list[Answer | None]) -> list[Answer]:
    out = [a for a in answers if a is not None]
    if len(out) != len(answers):
        raise RuntimeError("internal error: an item was left without an answer")
    return out


class ReadyGroup:
    """Tells each call reaching one step whether other calls reached it in the same turn of
    the event loop (e.g. because one store call answered all their claims).

    Must be used from one event loop.
    """

    def __init__(self) -> None:
        self.ready = 0
        """Calls at the step now (those running `together` stay counted until it returns)."""

    async def run(
        self, alone: Callable[[], Awaitable[T]], together: Callable[[], Awaitable[T]]
    ) -> T:
        """Yield to the event loop once, then run `together()` if another call is at this
        step (it stays counted while `together` runs), else `alone()`."""
        self.ready += 1
        try:
            await asyncio.sleep(0)
            if self.ready > 1:
                return await together()
        finally:
            self.ready -= 1
        return await alone()
