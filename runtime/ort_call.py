"""The cheapest correct way to call an onnxruntime session once per request.

`InferenceSession.run` re-validates the feed's input names and builds a fresh RunOptions
on every call; for the microsecond-scale models edge nodes serve that is a large share of
the call (figures in docs/performance.md). `direct_runner` binds the
session's compiled runner and one shared RunOptions once, so each call only does the work
that depends on the input. Input names are checked once by the caller (the bundle's
manifest was checked against the graph at load), so nothing is lost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Runner = Callable[[Sequence[str], dict[str, Any]], list[Any]]


def direct_runner(session: Any) -> Runner:
    """A function `run(output_names, feeds) -> outputs` equivalent to `session.run`.

    Uses the session's bound C++ runner (`session._sess.run`) with one RunOptions shared by
    every call when this onnxruntime build exposes it, else the public `session.run`.
    Thread-safe exactly as `InferenceSession.run` is (onnxruntime allows concurrent runs
    on one session; RunOptions is read-only during a run). Raises whatever onnxruntime
    raises for a failed run.
    """
    import onnxruntime as ort

    bound = getattr(session, "_sess", None)
    run = getattr(bound, "run", None)
    if not callable(run):
        return lambda names, feeds: session.run(list(names), feeds)
    options = ort.RunOptions()

    def direct(names: Sequence[str], feeds: dict[str, Any]) -> list[Any]:
        return run(names, feeds, options)  # type: ignore[no-any-return]

    return direct
