"""Edge API auth (`api.auth`): bearer token on /v1/*, health and metrics open.

The end-to-end test runs a real edge node process (its cloud URL points at a closed port:
auth does not need the cloud); the rest are unit tests of edge_node.http.auth.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from edge_node.http.auth import check_token_configured, token_matches
from edgeroute.client import Client
from router.errors import PolicyError, Unauthorized
from router.policy import ApiAuthSettings
from tests.edge_fixtures import EdgeNode, policy_text

TOKEN = "s3cret-edge-token"
AUTH_BLOCK = "api:\n  auth:\n    token_env: EDGE_API_TOKEN\n"


def test_token_required_on_v1_and_health_open(
    start_edge: Callable[..., EdgeNode],
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
    edge_margins: np.ndarray,
) -> None:
    """No token, a wrong token or a wrong scheme get 401 `unauthorized` on every /v1/*
    route; the right token is served; /healthz, /readyz and /metrics need no token."""
    x, _ = digits_split
    policy = policy_text(demo_bundles_dir / "edge" / "digits") + AUTH_BLOCK
    node = start_edge(policy, "http://127.0.0.1:9", env={"EDGE_API_TOKEN": TOKEN})
    body = {"task": "digits", "inputs": x[int(np.argmax(edge_margins))].tolist()}
    wrong = [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer"},
    ]
    for headers in wrong:
        for method, path in (
            ("POST", "/v1/infer"),
            ("GET", "/v1/status"),
            ("GET", "/v1/results/abc"),
            ("POST", "/v1/policy/reload"),
        ):
            resp = httpx.request(
                method, f"{node.url}{path}", json=body, headers=headers, timeout=10
            )
            assert resp.status_code == 401, (headers, path, resp.text)
            assert resp.json()["error"]["code"] == "unauthorized"
            assert resp.headers["www-authenticate"] == "Bearer"
    ok = {"Authorization": f"Bearer {TOKEN}"}
    resp = httpx.post(f"{node.url}/v1/infer", json=body, headers=ok, timeout=10)
    assert resp.status_code == 200 and resp.json()["route"] == "edge"
    assert httpx.get(f"{node.url}/v1/status", headers=ok, timeout=10).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{node.url}{path}", timeout=10).status_code == 200, path

    with Client(node.url, token=TOKEN) as client:
        assert client.infer("digits", body["inputs"]).route == "edge"  # type: ignore[arg-type]
    with Client(node.url) as client, pytest.raises(Unauthorized):
        client.infer("digits", body["inputs"])  # type: ignore[arg-type]


def test_token_matches() -> None:
    """Only `Bearer <exact token>` matches (scheme case-insensitive); empty never does."""
    assert token_matches(f"Bearer {TOKEN}", TOKEN)
    assert token_matches(f"bearer {TOKEN}", TOKEN)
    assert not token_matches(f"Bearer {TOKEN[:-1]}", TOKEN)
    assert not token_matches(TOKEN, TOKEN)
    assert not token_matches(None, TOKEN)
    assert not token_matches("Bearer ", "")


def test_unset_token_env_refuses_to_start() -> None:
    """api.auth naming an unset or empty variable is a PolicyError (fail closed)."""
    auth = ApiAuthSettings(token_env="EDGE_API_TOKEN")
    with pytest.raises(PolicyError, match="EDGE_API_TOKEN"):
        check_token_configured(auth, {})
    with pytest.raises(PolicyError):
        check_token_configured(auth, {"EDGE_API_TOKEN": ""})
    check_token_configured(auth, {"EDGE_API_TOKEN": TOKEN})
    check_token_configured(None, {})
