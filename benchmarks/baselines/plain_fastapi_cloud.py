"""Baseline: the cloud re-ranker as a user would write it by hand with FastAPI, uvicorn
(one worker) and the same ONNX session: `POST /v1/rerank` with a pydantic body, no auth,
dedup, batching, metrics or logs.

Run: `python -m benchmarks.baselines.plain_fastapi_cloud --bundle DIR --port N`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pydantic import BaseModel


class Body(BaseModel):
    """One re-rank item (module level so FastAPI resolves the annotation)."""

    task: str
    request_id: str
    inputs: list[float]
    candidates: list[str] | None = None


def build_app(bundle: Path) -> Any:
    """The FastAPI app answering `/v1/rerank` and `/healthz` from the bundle's session."""
    from fastapi import FastAPI
    from fastapi.responses import ORJSONResponse

    from benchmarks.baselines.plain_model import PlainModel

    model = PlainModel(bundle)
    app = FastAPI()

    @app.post("/v1/rerank")
    async def rerank(body: Body) -> ORJSONResponse:
        return ORJSONResponse({"results": [model.answer(body.model_dump())]})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    """Serve the baseline on 127.0.0.1 until killed."""
    import uvicorn

    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True, type=Path)
    ap.add_argument("--port", required=True, type=int)
    args = ap.parse_args()
    uvicorn.run(
        build_app(args.bundle), host="127.0.0.1", port=args.port, log_level="warning", workers=1
    )


if __name__ == "__main__":
    main()
