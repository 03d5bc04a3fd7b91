"""The garbage-collector settings of an edge node process.

CPython collects its youngest generation every 700 net container allocations by default
and, every 100 such collections, traverses every tracked object of the process (modules,
pydantic schemas, onnxruntime wrappers...): on a small edge CPU a full collection is a
long pause, during which the event loop answers nothing. A node allocates thousands of
short-lived containers per drained batch and per burst of requests, almost all freed by
reference counting, so those collections find little to free.

`tune_gc` is process-wide: call it once from a node process's entry point (`edgeroute
edge serve`), after startup, never from library code or tests that share a process.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000
"""Net container allocations between two collections of the youngest generation."""


def tune_gc(young_threshold: int = YOUNG_THRESHOLD) -> None:
    """Collect once, then move every object that survived startup out of the collector's
    generations (`gc.freeze`: full collections stop traversing them; they are still
    freed by reference counting) and collect the youngest generation every
    `young_threshold` allocations instead of 700 (the older generations keep their
    defaults relative to it). Cycles created later are still collected. Not thread-safe
    against other code changing the gc settings; raises nothing."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, older, oldest)
