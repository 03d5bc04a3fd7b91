"""`make bench`: run every `benchmarks/bench_*.py` module's `main()` and write
benchmarks/RESULTS.json and benchmarks/RESULTS.md (one record per comparison)."""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
FIELDS = ("name", "ours", "baseline", "ratio", "goal", "unit", "met")


# Modules that start Ray run last: a Ray instance takes seconds to wind down after
# `ray.shutdown()`, and its exiting workers would otherwise load the cores under the next
# module's measurements (seen: raw InferenceSession.run p50 at 11.7 us instead of 7 us).
LAST = ("bench_edge", "bench_cloud")
SETTLE_S = 10.0


def _order(path: Path) -> tuple[int, str]:
    return (LAST.index(path.stem) + 1 if path.stem in LAST else 0, path.stem)


def run() -> list[dict[str, Any]]:
    """Import and run each bench module (those in LAST at the end, pausing SETTLE_S between
    modules); a module that fails is recorded as a failed record rather than stopping the
    others."""
    records: list[dict[str, Any]] = []
    for i, path in enumerate(sorted(HERE.glob("bench_*.py"), key=_order)):
        if i:
            time.sleep(SETTLE_S)
        mod_name = f"benchmarks.{path.stem}"
        print(f"== {mod_name}", flush=True)
        try:
            records += importlib.import_module(mod_name).main()
        except Exception as exc:  # a broken benchmark must not hide the others' results
            print(f"!! {mod_name} failed: {type(exc).__name__}: {exc}", flush=True)
            records.append({"name": f"{path.stem}_failed", "ours": None, "baseline": None,
                            "ratio": None, "goal": "runs", "unit": "", "met": False})  # fmt: skip
    return records


def write(records: list[dict[str, Any]]) -> None:
    """RESULTS.json (records + machine) and RESULTS.md (a table, misses marked)."""
    meta = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "python": sys.version.split()[0],
            "machine": platform.platform(), "cpus": __import__("os").cpu_count()}  # fmt: skip
    (HERE / "RESULTS.json").write_text(json.dumps({"meta": meta, "records": records}, indent=2))
    rows = ["| " + " | ".join(FIELDS) + " |", "|" + "---|" * len(FIELDS)]
    rows += ["| " + " | ".join(str(r.get(f)) for f in FIELDS) + " |" for r in records]
    goals = [r for r in records if r.get("met") is not None]  # "report only" rows have None
    met = sum(1 for r in goals if r["met"])
    (HERE / "RESULTS.md").write_text(
        f"# Benchmark results\n\n{meta['when']}, Python {meta['python']}, {meta['machine']}, "
        f"{meta['cpus']} CPUs. {met}/{len(goals)} goals met.\n\n" + "\n".join(rows) + "\n"
    )


def main() -> None:
    """Run everything and write the results files."""
    records = run()
    write(records)
    print(f"wrote {HERE / 'RESULTS.md'} and {HERE / 'RESULTS.json'}")


if __name__ == "__main__":
    main()
