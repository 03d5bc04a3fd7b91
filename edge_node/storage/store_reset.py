"""Moving a store that cannot be trusted aside, on an operator's explicit word.

`edgeroute edge serve --reset-store NAME` is the only way past a `StoreCorrupt` refusal
other than restoring the file: the store's folder is renamed (never deleted) to
`NAME.reset-<UTC time>` beside it, so the node starts with an empty store while the old
one stays on disk for forensics or a manual restore, and the caller is told what the
reset loses (`durable_cache.STORE_LOSSES`).
"""

from __future__ import annotations

import time
from pathlib import Path

from edge_node.storage.data_dir_lock import exclusive
from edge_node.storage.durable_cache import STORE_LOSSES

RESETTABLE = tuple(STORE_LOSSES)
"""The stores `--reset-store` accepts: queue, results, budget."""


def reset_stores(
    data_dir: Path, names: tuple[str, ...], *, now: float | None = None
) -> list[tuple[str, Path, str]]:
    """Rename each named store's folder of `data_dir` to `<name>.reset-<UTC time>`, holding
    the data dir's writer lock (refuses with DataDirBusy while a node runs on it). Returns
    (name, where it went, what is lost) per store moved; a store with no folder is
    skipped. Each rename is atomic; raises OSError if one fails (earlier ones stay
    moved). Raises ValueError for a name not in RESETTABLE."""
    unknown = [n for n in names if n not in STORE_LOSSES]
    if unknown:
        raise ValueError(f"unknown store {unknown[0]!r} (allowed: {', '.join(RESETTABLE)})")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    moved: list[tuple[str, Path, str]] = []
    with exclusive(data_dir, "edgeroute edge serve --reset-store"):
        for name in dict.fromkeys(names):
            src = data_dir / name
            if not src.exists():
                continue
            dst = data_dir / f"{name}.reset-{stamp}"
            n = 1
            while dst.exists():
                n += 1
                dst = data_dir / f"{name}.reset-{stamp}-{n}"
            src.rename(dst)
            moved.append((name, dst, STORE_LOSSES[name]))
    return moved
