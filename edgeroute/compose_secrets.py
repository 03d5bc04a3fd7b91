"""`make secrets`: create the secret files docker-compose.yml mounts, with fresh random
tokens. Standard library only (runs before any set-up).

Writes, in the folder given (default `secrets/`, which git ignores), each only if absent:
- `edgeroute-tokens`: the cloud's `node_id token` lines (one line, for the compose edge);
- `edge.env`: `EDGEROUTE_CLOUD_TOKEN=<the same token>` for the edge container;
- `ray-token`: the Ray cluster's auth token (`RAY_AUTH_MODE=token`).
Files are created with mode 0600, owned by the user running it; an existing file is never
overwritten (rotate by hand, docs/cloud.md). The images run as uid 1000: on a host whose
user has another uid, `chown 1000` the files before `docker compose up`.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from pathlib import Path

NODE_ID_LINE = re.compile(r"^\s*id:\s*([A-Za-z0-9][A-Za-z0-9._-]*)", re.MULTILINE)
EDGE_POLICY = Path(__file__).resolve().parents[1] / "deploy" / "edge-policy.yaml"


def _write_new(path: Path, text: str) -> bool:
    """Create `path` (0600) holding `text`; False if it already exists (left as it is)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return True


def create(folder: Path, node_id: str) -> list[str]:
    """Create the missing secret files in `folder`; returns the names written. A missing
    `edge.env` is rebuilt from `node_id`'s line of an existing tokens file."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    tokens_file, edge_env = folder / "edgeroute-tokens", folder / "edge.env"
    written = []
    token: str | None = secrets.token_urlsafe(32)
    if _write_new(tokens_file, f"{node_id} {token}\n"):
        written.append(tokens_file.name)
        edge_env.unlink(missing_ok=True)  # the edge's token must match the new tokens file
    else:
        token = _token_of(tokens_file, node_id)
    if token is not None and _write_new(edge_env, f"EDGEROUTE_CLOUD_TOKEN={token}\n"):
        written.append(edge_env.name)
    if _write_new(folder / "ray-token", secrets.token_hex(32) + "\n"):
        written.append("ray-token")
    return written


def _token_of(tokens_file: Path, node_id: str) -> str | None:
    """`node_id`'s token in a `node_id token` lines file, or None if it has no line (the
    format `cloud_service.auth.parse_tokens` reads, read here with the standard library
    because `make secrets` runs before any set-up)."""
    for line in tokens_file.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == node_id:
            return parts[1]
    return None


def main(argv: list[str]) -> int:
    """`python -m edgeroute.compose_secrets [FOLDER]`."""
    folder = Path(argv[0] if argv else "secrets")
    found = NODE_ID_LINE.search(EDGE_POLICY.read_text(encoding="utf-8"))
    if found is None:
        print(f"error: no node id in {EDGE_POLICY}", file=sys.stderr)
        return 2
    written = create(folder, found.group(1))
    names = ("edgeroute-tokens", "edge.env", "ray-token")
    kept = [n for n in names if n not in written and (folder / n).exists()]
    missing = [n for n in names if not (folder / n).exists()]
    print(f"{folder}: wrote {', '.join(written) or 'nothing'}; kept {', '.join(kept) or 'nothing'}")
    if missing:
        print(f"error: {', '.join(missing)} not written: {found.group(1)} has no line in "
              f"{folder / 'edgeroute-tokens'}", file=sys.stderr)  # fmt: skip
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
