"""Baseline: a minimal hand-written FastAPI + onnxruntime endpoint (what a product team
would write without edgeroute). `POST /infer {"inputs": [64 numbers]}` -> label + probs.

Run: `python -m benchmarks.baselines.fastapi_onnx --bundle DIR --port N`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pydantic import BaseModel


class Body(BaseModel):
    """The request body: one flat input vector."""

    inputs: list[float]


def build_app(bundle: Path) -> Any:
    """The baseline app serving the bundle's model.onnx with the same session options."""
    import json

    import numpy as np
    import onnxruntime as ort
    from fastapi import FastAPI

    from runtime.bundle import session_options

    manifest = json.loads((bundle / "manifest.json").read_text())
    labels = manifest["labels"]
    sess = ort.InferenceSession(
        str(bundle / "model.onnx"),
        sess_options=session_options(),
        providers=["CPUExecutionProvider"],
    )
    name = sess.get_inputs()[0].name

    app = FastAPI()

    @app.post("/infer")
    async def infer(body: Body) -> dict[str, Any]:
        x = np.asarray(body.inputs, dtype=np.float32).reshape(1, -1)
        probs = sess.run(["probabilities"], {name: x})[0][0]
        i = int(np.argmax(probs))
        return {"label": labels[i], "score": float(probs[i])}

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
    uvicorn.run(build_app(args.bundle), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
