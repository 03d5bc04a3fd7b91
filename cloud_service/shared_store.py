"""A replica's adapter of the shared store actor (`cloud_service.result_store`) to the
`rerank_flow.DedupStore` protocol. Importing this module imports ray; the actor handle is
passed in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from ray.exceptions import RayError

from cloud_service.result_store import CLAIMED, Outcome, StoredResult, StoreKey
from cloud_service.settings import CloudServiceSettings
from cloud_service.store_client import CoalescingStore

_log = structlog.get_logger("cloud_service.shared_store")


class SharedStore:
    """This replica's view of the shared store actor (`rerank_flow.DedupStore`): claims go
    through a `CoalescingStore`, waits straight to the actor (so a wait never holds up the
    replica's other store traffic). A store outage (RayError) makes every asked key
    CLAIMED: the item is computed, not deduplicated, and a warning is logged."""

    def __init__(
        self, actor: Any, cfg: CloudServiceSettings, busy: Callable[[], bool] | None = None
    ) -> None:
        self._actor = actor
        self._max_wait_s = cfg.dedup_claim_timeout_s + 1.0
        self.client = CoalescingStore(
            self._settle,
            flush_delay_s=cfg.dedup_flush_delay_s,
            on_write_error=_write_failed,
            linger_s=cfg.dedup_claim_linger_s,
            busy=busy,
        )

    async def _settle(
        self, puts: list[tuple[StoreKey, StoredResult]], releases: list[StoreKey],
        claims: list[tuple[StoreKey, str]],
    ) -> list[Outcome]:  # fmt: skip
        outcomes: list[Outcome] = await self._actor.settle.remote(puts, releases, claims)
        return outcomes

    async def claim(self, claims: list[tuple[StoreKey, str]]) -> list[Outcome]:
        """See `CoalescingStore.claim`."""
        try:
            return await self.client.claim(claims)
        except RayError as exc:
            _log.warning("result_store_unavailable", reason=type(exc).__name__)
            return [CLAIMED] * len(claims)

    async def wait(self, claims: list[tuple[StoreKey, str]]) -> list[Outcome]:
        """See `ResultStoreActor.wait_claims` (e.g. after a store restart lost the claims,
        the call fails and every key is CLAIMED)."""
        try:
            outcomes: list[Outcome] = await self._actor.wait_claims.remote(claims, self._max_wait_s)
        except RayError as exc:
            _log.warning("result_store_unavailable", reason=type(exc).__name__)
            return [CLAIMED] * len(claims)
        return outcomes

    def put_later(self, entries: list[tuple[StoreKey, StoredResult]]) -> None:
        """See `CoalescingStore.put_later`."""
        self.client.put_later(entries)

    def release_later(self, keys: list[StoreKey]) -> None:
        """See `CoalescingStore.release_later`."""
        self.client.release_later(keys)


def _write_failed(exc: BaseException) -> None:
    _log.warning("result_store_write_failed", reason=type(exc).__name__)
