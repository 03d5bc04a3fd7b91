"""The model code shared by the cloud benchmark's baselines: the cloud bundle's ONNX session
(opened with the same options as edgeroute's `CloudModel`) and the few lines a user would
write to answer one re-rank body by hand: no auth, no schema, no dedup, no metrics, no logs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class PlainModel:
    """One cloud bundle's session and labels; `answer` handles one decoded JSON body."""

    def __init__(self, bundle: str | Path) -> None:
        import onnxruntime as ort

        from runtime.bundle import session_options

        folder = Path(bundle)
        manifest = json.loads((folder / "manifest.json").read_text())
        self.labels: list[str] = manifest["labels"]
        self.index = {label: i for i, label in enumerate(self.labels)}
        self.version: str = manifest["version"]
        self.output: str = manifest["output"]["name"]
        self.session = ort.InferenceSession(
            str(folder / "model.onnx"),
            sess_options=session_options(),
            providers=["CPUExecutionProvider"],
        )
        self.input: str = self.session.get_inputs()[0].name

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        """Score `body["inputs"]` and rank `body["candidates"]` (all labels when absent)."""
        import numpy as np

        x = np.asarray(body["inputs"], dtype=np.float32).reshape(1, -1)
        probs = self.session.run([self.output], {self.input: x})[0][0]
        wanted = body.get("candidates") or self.labels
        ranked = sorted(((c, float(probs[self.index[c]])) for c in wanted), key=lambda t: -t[1])
        return {
            "request_id": body.get("request_id"),
            "task": body.get("task"),
            "label": ranked[0][0],
            "score": ranked[0][1],
            "candidates": [{"label": c, "score": s} for c, s in ranked],
            "model_version": self.version,
        }
