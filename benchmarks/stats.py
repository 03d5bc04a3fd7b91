"""Percentiles and result records shared by the benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def summary(samples: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max of `samples` (same unit as the samples)."""
    a = np.asarray(samples, dtype=float)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(a.max())}


def line(name: str, s: dict[str, float], unit: str) -> str:
    """One printable line of a summary."""
    cols = "  ".join(f"{k} {s[k]:9.3f}" for k in ("p50", "p90", "p99", "max"))
    return f"  {name:<34} {cols} {unit}"


def record(
    name: str,
    ours: float,
    baseline: float,
    goal: str,
    unit: str,
    met: bool | None,
    ratio: float | None = None,
) -> dict[str, object]:
    """A comparison record (ratio = ours / baseline unless given), printed as it is made."""
    r = ratio if ratio is not None else (ours / baseline if baseline else float("inf"))
    rec = {"name": name, "ours": round(ours, 4), "baseline": round(baseline, 4),
           "ratio": round(r, 3), "goal": goal, "unit": unit,
           "met": None if met is None else bool(met)}  # fmt: skip
    print(f"  -> {name}: ours {ours:.4f} vs baseline {baseline:.4f} {unit}, ratio {r:.3f}, "
          f"goal {goal}: {'-' if met is None else 'MET' if met else 'NOT MET'}")  # fmt: skip
    return rec
