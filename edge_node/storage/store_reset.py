"""Moving a store that cannot be trusted aside, on an operator's explicit word.

`edgeroute edge serve --reset-store NAME` is the only way past a `StoreCorrupt` refusal
other than restoring the file: the store's folder is renamed (never deleted) to
`NAME.reset-<UTC time>` beside it, so the node starts with an empty store while the old
one stays on disk for forensics or a manual restore, and the caller is told what the
reset loses (`durable_cache.STORE_LOSSES`). Only a store the node would refuse is moved:
a flag left in a service definition never throws away a healthy queue on a restart.
"""

from __future__ import annotations

import time
from pathlib import Path

from edge_node.storage.budget_store import BudgetStore
from edge_node.storage.data_dir_lock import exclusive
from edge_node.storage.durable_cache import STORE_LOSSES, StoreCorrupt, check_store_file
from router.policy import CostSettings

RESETTABLE = tuple(STORE_LOSSES)
"""The stores `--reset-store` accepts: queue, results, budget."""


def refusal(data_dir: Path, name: str) -> StoreCorrupt | None:
    """Why the node would refuse store `name` of `data_dir` at start, or None if it opens
    (row-level faults are quarantined, not refused). Reads only."""
    directory = data_dir / name
    try:
        if name == "budget":  # its one ledger row must decode too
            BudgetStore(directory, CostSettings(), clock=time.time).close()
        else:
            check_store_file(directory, name)
    except StoreCorrupt as exc:
        return exc
    return None


def reset_stores(
    data_dir: Path, names: tuple[str, ...], *, now: float | None = None
) -> list[tuple[str, Path | None, str]]:
    """For each named store of `data_dir` the node would refuse (`refusal`), rename its
    folder to `<name>.reset-<UTC time>`, holding the data dir's writer lock (refuses with
    DataDirBusy while a node runs on it). Returns, per name, (name, where it went, what
    is lost), or (name, None, why it was left alone) for a store that opens or has no
    folder. Each rename is atomic; raises OSError if one fails (earlier ones stay
    moved). Raises ValueError for a name not in RESETTABLE."""
    unknown = [n for n in names if n not in STORE_LOSSES]
    if unknown:
        raise ValueError(f"unknown store {unknown[0]!r} (allowed: {', '.join(RESETTABLE)})")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    out: list[tuple[str, Path | None, str]] = []
    with exclusive(data_dir, "edgeroute edge serve --reset-store"):
        for name in dict.fromkeys(names):
            src = data_dir / name
            if not src.exists():
                out.append((name, None, "no such store: nothing to reset"))
                continue
            if refusal(data_dir, name) is None:
                out.append((name, None, "it opens cleanly: left as it is"))
                continue
            dst = data_dir / f"{name}.reset-{stamp}"
            n = 1
            while dst.exists():
                n += 1
                dst = data_dir / f"{name}.reset-{stamp}-{n}"
            src.rename(dst)
            out.append((name, dst, STORE_LOSSES[name]))
    return out
