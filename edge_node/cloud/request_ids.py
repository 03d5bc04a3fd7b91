"""Request ids the node makes for requests that bring none, and whether it made an id.

The cloud link uses `take_unsent` to mark a call's first try as a first send
(`router.wire.FIRST_SEND_HEADER`): an id this process made was never sent before the
request that got it escalates, so the cloud may skip its idempotency claim for it. That
knowledge lives here and in `edge_node.cloud.client` alone.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable


class RequestIds:
    """32 hex digits of 128 random bits from `rand` (the OS's CSPRNG by default): unique
    across restarts and nodes, and not guessable from ids seen before, so a request's
    result cannot be found by walking ids. Remembers the last `keep` ids it made that
    were not sent yet (oldest forgotten first), so `take_unsent` can tell a first send
    from a client echoing an id back. Thread-safe under the GIL (OrderedDict insert and pop
    are atomic). Every method is O(1) per id: the oldest id is dropped by
    `popitem(last=False)`, not by scanning."""

    __slots__ = ("_keep", "_rand", "_unsent")

    def __init__(self, rand: Callable[[int], bytes] = os.urandom, keep: int = 16_384) -> None:
        self._rand = rand
        self._keep = keep
        self._unsent: OrderedDict[str, None] = OrderedDict()

    def new(self) -> str:
        """A fresh id, remembered as not sent yet."""
        rid = self._rand(16).hex()
        unsent = self._unsent
        unsent[rid] = None
        if len(unsent) > self._keep:
            unsent.popitem(last=False)
        return rid

    def take_unsent(self, request_ids: list[str]) -> bool:
        """True if every id was made by `new` and never taken before (so no call can have
        carried it); takes them all either way. An id forgotten by the bound, or echoed
        back by a client, is not unsent."""
        fresh = all(rid in self._unsent for rid in request_ids)
        for rid in request_ids:
            self._unsent.pop(rid, None)
        return fresh
