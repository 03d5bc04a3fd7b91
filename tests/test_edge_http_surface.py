"""The edge node's HTTP surface around the routes, on a real node process: routing errors
in the project's error shape, the offline API reference page, the bearer scheme in the
OpenAPI schema, and UNIX times in /v1/status."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from tests.edge_fixtures import EdgeNode, policy_text
from tests.waiting import wait_until


def test_routing_errors_docs_page_schema_and_status_times(
    start_edge: Callable[..., EdgeNode],
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
    edge_margins: np.ndarray,
) -> None:
    """404 and 405 answer `{"error": {"code", "message", "field"}}` (405 keeps `Allow`);
    /docs is one HTML page naming every route with nothing loaded from elsewhere; the
    schema declares the bearer scheme on /v1/*; /v1/status breaker times are UNIX seconds."""
    node = start_edge(policy_text(demo_bundles_dir / "edge" / "digits"), "http://127.0.0.1:9")

    missing = httpx.get(f"{node.url}/no/such/path", timeout=10)
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": "not_found", "message": "Not Found", "field": None}}
    wrong_method = httpx.get(f"{node.url}/v1/policy/reload", timeout=10)
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"

    schema = httpx.get(f"{node.url}/openapi.json", timeout=10).json()
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert schema["paths"]["/v1/infer"]["post"]["security"] == [{"bearerAuth": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]

    page = httpx.get(f"{node.url}/docs", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for path in schema["paths"]:
        assert f"<code>{path}</code>" in page.text, path
    assert "bearer" in page.text
    assert not re.search(r"<script|<link|(src|href)=['\"]?(https?:)?//", page.text, re.I)

    x, _ = digits_split
    unsure = x[int(np.argmin(edge_margins))].tolist()
    before = time.time()

    def breaker_opened() -> bool:
        """One more unsure request to the dead cloud; True once the breaker has opened."""
        node.infer({"task": "digits", "inputs": unsure})
        return node.status()["connectivity"]["opened_at"] is not None  # type: ignore[index]

    wait_until(breaker_opened, 30, 0.05, "the breaker to open")
    conn = node.status()["connectivity"]
    assert before - 1 <= conn["opened_at"] <= time.time() + 1  # type: ignore[index,operator]
    assert conn["open_until"] > conn["opened_at"]  # type: ignore[index,operator]
