"""Baseline: a plain Ray Serve deployment of the cloud bundle's ONNX session, the way the
Serve docs write one (`__call__` taking the Starlette request), with none of edgeroute's
layers (no FastAPI ingress, auth, schema validation, dedup store, batching, metrics, logs).

`max_ongoing_requests` is set like edgeroute's default (256): Serve's default of 5 would
throttle it. Importing this module imports ray; `bench_cloud` imports it lazily.
"""

from __future__ import annotations

from typing import Any

import orjson
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from benchmarks.baselines.plain_model import PlainModel


@serve.deployment(name="PlainRerank", max_ongoing_requests=256)
class PlainRerank:
    """One replica holding the session; every HTTP call is one body -> one answer."""

    def __init__(self, bundle: str) -> None:
        self._model = PlainModel(bundle)

    async def __call__(self, request: Request) -> Response:
        """Answer one re-rank body (any path under the app's route prefix)."""
        answer = self._model.answer(orjson.loads(await request.body()))
        return Response(orjson.dumps({"results": [answer]}), media_type="application/json")


def build(bundle: str) -> Any:
    """The bound application (deploy it with `serve.run`)."""
    return PlainRerank.bind(bundle)  # type: ignore[attr-defined]
