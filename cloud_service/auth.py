"""Bearer-token auth for the cloud service: tokens from a file that can change at runtime
and/or from an environment variable.

The file holds one `node_id token` pair per line (blank lines and `#` comments ignored).
Its content is hashed on every check and re-parsed when the hash changes, so deleting or
rotating a line revokes a node without a restart, also when a deploy keeps the mtime and
size (`cp -p`, tar, fixed-mtime images). The environment variable holds the same pairs separated
by newlines or commas; it is read once when a replica starts (revoke by redeploying).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

from router.errors import Unauthorized

_log = structlog.get_logger("cloud_service.auth")

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


def parse_env_tokens(value: str) -> dict[str, bytes]:
    """Parse `node_id token` pairs separated by newlines or commas (an env var's value).

    Raises ValueError naming the bad entry's position (never the token itself).
    """
    return parse_tokens(value.replace(",", "\n"))


class EnvTokens:
    """The tokens held by environment variable `name`, read once at construction.

    A missing or unparsable variable means no tokens (fail closed, logged once).
    """

    def __init__(self, name: str, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        value = env.get(name)
        self._tokens: dict[str, bytes] = {}
        if value is None:
            _log.warning("auth_tokens_env_missing", reason=name)
            return
        try:
            self._tokens = parse_env_tokens(value)
        except ValueError as exc:
            _log.warning("auth_tokens_env_invalid", reason=str(exc).replace("file", "env"))

    def tokens(self) -> Mapping[str, bytes]:
        """The tokens read at construction."""
        return self._tokens


class TokenFile:
    """The tokens of one file, re-parsed whenever its content changes. Thread-safe.

    Every call reads the file and compares a SHA-256 of its bytes with the last one parsed,
    so a change is seen on the next request whatever the file's mtime and size say.
    A missing, unreadable or unparsable file means no tokens (every request is refused:
    fail closed).
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._digest: bytes | None = None
        self._tokens: dict[str, bytes] = {}

    def tokens(self) -> Mapping[str, bytes]:
        """The current tokens, re-parsing the file if its content changed since the last call."""
        with self._lock:
            try:
                data = self._path.read_bytes()
            except OSError:
                self._digest, self._tokens = None, {}
                return self._tokens
            digest = hashlib.sha256(data).digest()
            if digest != self._digest:
                try:
                    self._tokens = parse_tokens(data.decode("utf-8"))
                except (ValueError, UnicodeDecodeError):
                    self._tokens = {}
                    _log.warning("auth_tokens_file_invalid", reason="unparsable tokens file")
                self._digest = digest
            return self._tokens

    def check(self, node_id: str, authorization: str | None) -> None:
        """Raise `Unauthorized` unless the header carries this node's current token."""
        check_bearer(self.tokens(), node_id, authorization)


class TokenSources:
    """Several token sources checked together (file tokens win over env ones per node).

    Thread-safe if each source is.
    """

    def __init__(self, sources: Sequence[TokenFile | EnvTokens]) -> None:
        self._sources = list(sources)

    def tokens(self) -> Mapping[str, bytes]:
        """The union of every source's current tokens."""
        merged: dict[str, bytes] = {}
        for source in reversed(self._sources):
            merged.update(source.tokens())
        return merged

    def check(self, node_id: str, authorization: str | None) -> None:
        """Raise `Unauthorized` unless the header carries this node's current token."""
        check_bearer(self.tokens(), node_id, authorization)


def token_sources(tokens_file: Path | None, tokens_env: str | None) -> TokenSources | None:
    """The configured token sources, or None when auth is off (neither is set)."""
    sources: list[TokenFile | EnvTokens] = []
    if tokens_file is not None:
        sources.append(TokenFile(tokens_file))
    if tokens_env is not None:
        sources.append(EnvTokens(tokens_env))
    return TokenSources(sources) if sources else None
