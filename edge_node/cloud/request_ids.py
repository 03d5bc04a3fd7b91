"""Request ids the node makes for requests that bring none, and whether it made an id.

The cloud link uses `minted` to mark a call's first try as a first send
(`router.wire.FIRST_SEND_HEADER`): an id this process made was never sent before the
request that got it escalates, so the cloud may skip its idempotency claim for it. That
knowledge lives here and in `edge_node.cloud.client` alone.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable


class RequestIds:
    """32 hex digits: a random 64-bit prefix per instance, then a 64-bit counter. Unique
    across restarts and nodes (with the odds of a 64-bit collision). Thread-safe
    (itertools.count is atomic under the GIL)."""

    __slots__ = ("_counter", "_prefix")

    def __init__(self, rand: Callable[[int], bytes] = os.urandom) -> None:
        self._prefix = rand(8).hex()
        self._counter = itertools.count(1)

    def new(self) -> str:
        """A fresh id."""
        return f"{self._prefix}{next(self._counter):016x}"

    def minted(self, request_id: str) -> bool:
        """Whether `request_id` has this instance's form and prefix (made by `new`, or a
        copy of one a client echoes back)."""
        return len(request_id) == 32 and request_id.startswith(self._prefix)
