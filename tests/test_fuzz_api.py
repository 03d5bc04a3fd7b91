"""Schema-driven fuzzing of the edge node's HTTP API (schemathesis + hypothesis): no 500s,
no crash, nothing accepted is lost."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.edge_fixtures import EdgeNode, policy_text

pytestmark = pytest.mark.slow
EXAMPLES = 120


def test_fuzzed_requests_never_get_a_500(
    start_edge: Callable[..., EdgeNode], demo_bundles_dir: Path
) -> None:
    """Every operation, fed schema-valid and schema-violating requests, answers < 500, the
    node stays up, and every request it accepted as queued is still known afterwards."""
    node = start_edge(policy_text(demo_bundles_dir / "edge" / "digits"), "http://127.0.0.1:9")
    schema = schemathesis.openapi.from_url(f"{node.url}/openapi.json")
    accepted: set[str] = set()
    failures: list[str] = []
    calls: dict[str, int] = {}
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = op.as_strategy(generation_mode=mode)

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def run(case: schemathesis.Case) -> None:
                resp = case.call(base_url=node.url, timeout=10)
                calls[case.path] = calls.get(case.path, 0) + 1
                if resp.status_code >= 500:
                    failures.append(
                        f"{case.method} {case.path} -> {resp.status_code}: {resp.text[:200]}"
                    )
                if resp.status_code in (200, 202) and case.path == "/v1/infer":
                    body = resp.json()
                    if body.get("final") is False:
                        accepted.add(body["request_id"])

            try:
                run()
            except Unsatisfiable:
                if mode is GenerationMode.POSITIVE:
                    raise  # no schema-violating request exists for parameter-less operations
    assert calls.get("/v1/infer", 0) >= EXAMPLES, calls
    assert not failures, failures[:5]
    assert httpx.get(f"{node.url}/healthz", timeout=5).status_code == 200
    assert node.proc.poll() is None
    for rid in accepted:
        r = httpx.get(f"{node.url}/v1/results/{rid}", timeout=5)
        assert r.status_code == 200 and r.json()["status"] in ("pending", "done"), rid


@given(st.text(max_size=400))
@settings(max_examples=300, deadline=None)
def test_policy_loader_never_crashes_on_arbitrary_text(text: str) -> None:
    """Any text either parses as a policy or raises PolicyError; never another exception."""
    from router.errors import PolicyError
    from router.policy_loader import parse_policy

    try:
        parse_policy(text, env={})
    except PolicyError as exc:
        assert exc.issues
