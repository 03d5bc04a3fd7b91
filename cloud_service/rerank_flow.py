"""The re-rank request flow, free of Ray: dedup lookup, compute the misses, store, merge.

`app.py` plugs the Ray pieces (the store actor, the `@serve.batch` method) into these
functions; tests plug in fakes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

import structlog

from cloud_service.result_store import StoredResult, StoreKey, item_fingerprint
from router.wire import RerankFailure, RerankItem, RerankResult, WireError

Answer = RerankResult | RerankFailure
Lookup = Callable[[list[tuple[StoreKey, str]]], Awaitable[list[StoredResult | None]]]
Store = Callable[[list[tuple[StoreKey, StoredResult]]], Awaitable[None]]
Compute = Callable[[list[RerankItem]], Awaitable[list[Answer]]]

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
    lookup: Lookup,
    store: Store,
    compute: Compute,
) -> list[Answer]:
    """Answers for `items` in order, computing only those not already answered for their node
    (`node_id`: one node for every item, or one per item, e.g. a `@serve.batch` gathering
    the single-item calls of several nodes).

    Cached answers come back with `cached=True`. A request_id seen before with a different
    item (task, inputs or candidates) fails with code `request_id_conflict`; duplicates
    inside one call are computed once. Only successful results are stored, and `store` has
    returned before this does. Raises ValueError if a node list's length differs from items'.
    """
    nodes = [node_id] * len(items) if isinstance(node_id, str) else list(node_id)
    if len(nodes) != len(items):
        raise ValueError(f"{len(nodes)} node ids for {len(items)} items")
    fingerprints = [item_fingerprint(it.task, it.inputs or (), it.candidates) for it in items]
    keys: list[StoreKey] = [(node, it.request_id) for node, it in zip(nodes, items, strict=True)]
    found = await lookup(list(zip(keys, fingerprints, strict=True)))
    answers: list[Answer | None] = [None] * len(items)
    first_miss: dict[StoreKey, int] = {}
    repeats: list[int] = []
    for i, stored in enumerate(found):
        if stored is None:
            if keys[i] in first_miss:
                repeats.append(i)
            else:
                first_miss[keys[i]] = i
        elif stored.fingerprint == fingerprints[i]:
            answers[i] = RerankResult.model_validate({**stored.result, "cached": True})
        else:
            answers[i] = _conflict(items[i])
    misses = list(first_miss.values())
    computed = await compute([items[i] for i in misses]) if misses else []
    to_store: list[tuple[StoreKey, StoredResult]] = []
    for i, answer in zip(misses, computed, strict=True):
        answers[i] = answer
        if isinstance(answer, RerankResult):
            stored_result = StoredResult(fingerprints[i], answer.model_dump(mode="json"))
            to_store.append((keys[i], stored_result))
    for i in repeats:
        j = first_miss[keys[i]]
        first = answers[j]
        if fingerprints[i] != fingerprints[j]:
            answers[i] = _conflict(items[i])
        elif isinstance(first, RerankResult):
            answers[i] = first.model_copy(update={"cached": True})
        else:
            answers[i] = first
    if to_store:
        await store(to_store)
    return _filled(answers)


def _conflict(item: RerankItem) -> RerankFailure:
    return failure(
        item,
        "request_id_conflict",
        "this request_id was already used for a different item",
        "request_id",
    )


def _filled(answers: list[Answer | None]) -> list[Answer]:
    out = [a for a in answers if a is not None]
    if len(out) != len(answers):
        raise RuntimeError("internal error: an item was left without an answer")
    return out
