"""Run a command pinned to one CPU: `python -m benchmarks.pin CPU ARGV...`.

Sets this process's CPU affinity (Linux `sched_setaffinity`) and then execs `ARGV`, so the
command keeps this pid (stopping it by pid still works) and every process it starts (Ray's
raylet, GCS and workers included) inherits the affinity.
"""

from __future__ import annotations

import os
import sys


def pinned(cpu: int, argv: list[str]) -> list[str]:
    """`argv` wrapped so that it runs on `cpu` only."""
    return [sys.executable, "-m", "benchmarks.pin", str(cpu), *argv]


def main() -> None:
    """Pin to the CPU in argv[1], then exec argv[2:] (never returns)."""
    cpu, argv = int(sys.argv[1]), sys.argv[2:]
    os.sched_setaffinity(0, {cpu})
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
