"""Bearer-token auth for the cloud service, from a tokens file that can change at runtime.

The file holds one `node_id token` pair per line (blank lines and `#` comments ignored).
It is re-read whenever its mtime (or size) changes, so deleting a line revokes a node
without restarting the service.
"""

from __future__ import annotations

import hmac
import os
import threading
from collections.abc import Mapping
from pathlib import Path

from router.errors import Unauthorized

_DUMMY_TOKEN = b"\0" * 32


def parse_tokens(text: str) -> dict[str, bytes]:
    """Parse `node_id token` lines into a mapping. Raises ValueError naming a bad line."""
    tokens: dict[str, bytes] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"tokens file line {number}: expected 'node_id token'")
        tokens[parts[0]] = parts[1].encode()
    return tokens


def check_bearer(tokens: Mapping[str, bytes], node_id: str, authorization: str | None) -> None:
    """Raise `Unauthorized` unless `authorization` is `Bearer <token>` for `node_id`.

    The comparison is constant-time (`hmac.compare_digest`), also for unknown nodes.
    """
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthorized("missing bearer token", field="Authorization")
    presented = authorization[len("Bearer ") :].strip().encode()
    expected = tokens.get(node_id)
    matches = hmac.compare_digest(presented, expected if expected is not None else _DUMMY_TOKEN)
    if expected is None or not matches:
        raise Unauthorized("invalid token for this node", field="Authorization")


class TokenFile:
    """The tokens of one file, re-read when its mtime/size changes. Thread-safe.

    A missing or unreadable file means no tokens (every request is refused: fail closed).
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._signature: tuple[int, int] | None = None
        self._tokens: dict[str, bytes] = {}

    def tokens(self) -> Mapping[str, bytes]:
        """The current tokens, re-reading the file if it changed since the last call."""
        with self._lock:
            try:
                st = os.stat(self._path)
            except OSError:
                self._signature, self._tokens = None, {}
                return self._tokens
            signature = (st.st_mtime_ns, st.st_size)
            if signature != self._signature:
                try:
                    self._tokens = parse_tokens(self._path.read_text(encoding="utf-8"))
                except (OSError, ValueError, UnicodeDecodeError):
                    self._tokens = {}
                self._signature = signature
            return self._tokens

    def check(self, node_id: str, authorization: str | None) -> None:
        """Raise `Unauthorized` unless the header carries this node's current token."""
        check_bearer(self.tokens(), node_id, authorization)
