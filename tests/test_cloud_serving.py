"""The cloud app's production behaviour on the session's real Serve instance: overload
answers 503 + Retry-After quickly, a multi-task app with one deployment per task, Ray
metrics exported from the replicas, env-var tokens and the config's application builder."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest

from cloud_service.auth import EnvTokens, TokenFile, TokenSources, token_sources
from cloud_service.settings import CloudServiceSettings
from router.errors import Unauthorized
from tests.dashboard import dashboard_metrics
from tests.waiting import holds_within, wait_until

AUTH = {"X-Edgeroute-Node": "test-node", "Authorization": "Bearer test-token"}


# --- pure pieces ------------------------------------------------------------------------


def test_env_tokens_accept_commas_and_newlines_and_fail_closed() -> None:
    """Env tokens parse `node token` pairs split by commas/newlines; missing/bad = none."""
    env = EnvTokens("T", {"T": "a tok-a, b tok-b\nc tok-c"})
    assert dict(env.tokens()) == {"a": b"tok-a", "b": b"tok-b", "c": b"tok-c"}
    assert dict(EnvTokens("T", {}).tokens()) == {}
    assert dict(EnvTokens("T", {"T": "a b c"}).tokens()) == {}


def test_token_sources_merge_file_over_env(tmp_path: Path) -> None:
    """File and env tokens both authorize; a file entry overrides the env one for its node."""
    path = tmp_path / "tokens"
    path.write_text("a file-a\n")
    sources = TokenSources([TokenFile(path), EnvTokens("T", {"T": "a env-a,b env-b"})])
    sources.check("a", "Bearer file-a")
    sources.check("b", "Bearer env-b")
    with pytest.raises(Unauthorized):
        sources.check("a", "Bearer env-a")
    assert token_sources(None, None) is None


def test_app_builder_rejects_unknown_args(demo_bundles_dir: Path) -> None:
    """A typo in the Serve config's args fails the build instead of being ignored."""
    from cloud_service.app import app_builder

    with pytest.raises(pydantic.ValidationError):
        app_builder({"bundles_dir": str(demo_bundles_dir / "cloud"), "max_batch": 3})


# --- dedicated apps on the session's Serve -------------------------------------------------


def _items(n: int, prefix: str, task: str = "digits") -> list[dict[str, Any]]:
    return [
        {"task": task, "request_id": f"{prefix}-{i}", "inputs": [float(i % 16)] * 64}
        for i in range(n)
    ]


async def _burst(url: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30.0) as client:
        return await asyncio.gather(*(client.post(url, json=b) for b in bodies))


@pytest.fixture
def overload_app(cloud_url: str, demo_bundles_dir: Path) -> Iterator[str]:
    """A tiny-limit app (1 ongoing, 1 queued, 1 s model) under /overload; deleted after."""
    from ray import serve

    from cloud_service.app import build_app

    settings = CloudServiceSettings(
        bundles_dir=demo_bundles_dir / "cloud",
        max_ongoing_requests=1,
        max_queued_requests=1,
        slow_model_s=1.0,
        batching=False,
        retry_after_s=2.0,
        result_store_name="overload-test-store",
    )
    serve.run(build_app(settings), name="overload", route_prefix="/overload")
    try:
        yield f"{cloud_url}/overload"
    finally:
        serve.delete("overload")


@pytest.mark.ray
@pytest.mark.slow
def test_burst_beyond_max_queued_requests_gets_503_with_retry_after(overload_app: str) -> None:
    """8 concurrent calls against 1 ongoing + 1 queued: the rest get 503 + Retry-After at
    once, the admitted ones still succeed, and nothing hangs."""
    started = time.monotonic()
    responses = asyncio.run(_burst(f"{overload_app}/v1/rerank", _items(8, "burst")))
    elapsed = time.monotonic() - started
    statuses = sorted(r.status_code for r in responses)
    rejected = [r for r in responses if r.status_code == 503]
    assert statuses.count(200) >= 1 and len(rejected) >= 5, statuses
    assert set(statuses) <= {200, 503}
    assert all(r.headers.get("retry-after") == "2" for r in rejected)
    assert elapsed < 6.0, f"burst took {elapsed:.1f} s"


def _second_task_bundles(demo_bundles_dir: Path, root: Path) -> Path:
    """digits plus a copy served as task `digits-b` with its own version."""
    shutil.copytree(demo_bundles_dir / "cloud" / "digits", root / "digits")
    shutil.copytree(demo_bundles_dir / "cloud" / "digits", root / "digits-b")
    manifest_path = root / "digits-b" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.update(task="digits-b", version="digits-b-cloud-2.0.0")
    manifest_path.write_text(json.dumps(manifest))
    return root


@pytest.fixture
def multi_app(cloud_url: str, demo_bundles_dir: Path, tmp_path: Path) -> Iterator[str]:
    """Per-task deployments under /multi: a roomy ingress, task deployments limited to
    1 ongoing + 1 queued with a 0.5 s model; deleted after."""
    from ray import serve

    from cloud_service.app import deployment_options, discover_tasks
    from cloud_service.deployment import CloudReranker
    from cloud_service.task_deployment import TaskModel

    settings = CloudServiceSettings(
        bundles_dir=_second_task_bundles(demo_bundles_dir, tmp_path),
        per_task_deployments=True,
        max_ongoing_requests=1,
        max_queued_requests=1,
        slow_model_s=0.5,
        batching=False,
        result_store_name="multi-test-store",
    )
    # num_cpus 0: the session's Ray has 2 CPUs and its own app holds one.
    tiny = {**deployment_options(settings), "ray_actor_options": {"num_cpus": 0}}
    handles = {
        task: TaskModel.options(name=f"model-{task}", **tiny).bind(settings, str(folder))  # type: ignore[attr-defined]
        for task, folder in discover_tasks(settings.bundles_dir).items()
    }
    roomy = {**tiny, "max_ongoing_requests": 64, "max_queued_requests": -1}
    app = CloudReranker.options(**roomy).bind(settings, handles)  # type: ignore[attr-defined]
    serve.run(app, name="multi", route_prefix="/multi")
    try:
        yield f"{cloud_url}/multi"
    finally:
        serve.delete("multi")


@pytest.mark.ray
@pytest.mark.slow
def test_multi_task_app_routes_each_task_to_its_deployment_and_sheds_load(
    multi_app: str,
) -> None:
    """Two tasks, two deployments: a mixed batch is answered by each task's model, and a
    burst beyond a task deployment's queue gets the ingress's 503 + Retry-After JSON."""
    health = httpx.get(f"{multi_app}/healthz", timeout=30).json()
    assert health["tasks"] == {"digits": "digits-cloud-1.0.0", "digits-b": "digits-b-cloud-2.0.0"}
    mixed = _items(2, "mix-a") + _items(2, "mix-b", task="digits-b")
    r = httpx.post(f"{multi_app}/v1/rerank", json={"items": mixed}, timeout=30)
    versions = [x["model_version"] for x in r.json()["results"]]
    assert versions == ["digits-cloud-1.0.0"] * 2 + ["digits-b-cloud-2.0.0"] * 2

    started = time.monotonic()
    responses = asyncio.run(_burst(f"{multi_app}/v1/rerank", _items(8, "multi-burst")))
    elapsed = time.monotonic() - started
    rejected = [r for r in responses if r.status_code == 503]
    assert len(rejected) >= 4, sorted(r.status_code for r in responses)
    assert all(r.headers.get("retry-after") == "1" for r in rejected)
    assert all(r.json()["error"]["code"] == "overloaded" for r in rejected)
    assert elapsed < 6.0, f"burst took {elapsed:.1f} s"


# --- metrics -------------------------------------------------------------------------------


def _scrape(port: int) -> str:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return ""


@pytest.mark.ray
@pytest.mark.slow
def test_replica_metrics_reach_rays_prometheus_export(cloud_url: str) -> None:
    """Requests, latency, batch sizes, dedup hits and auth failures recorded by the replica
    appear on Ray's metrics export port (and in the replica's /v1/stats mirror)."""
    import ray

    with httpx.Client(base_url=cloud_url, timeout=30) as c:
        c.post("/v1/rerank", json=_items(1, "metrics")[0], headers={"X-Edgeroute-Node": "x"})
        for _ in range(2):
            c.post("/v1/rerank", json=_items(1, "metrics")[0], headers=AUTH)
        mirror = c.get("/v1/stats", headers=AUTH).json()["metrics"]
    assert mirror["auth_failures"] >= 1 and mirror["dedup_hits"] >= 1
    assert mirror["batches"] >= 1 and mirror["requests.200"] >= 2

    port = ray._private.worker.global_worker.node.metrics_export_port
    wanted = [
        "ray_edgeroute_cloud_requests_total{",
        "ray_edgeroute_cloud_latency_seconds_bucket{",
        "ray_edgeroute_cloud_batch_size_bucket{",
        "ray_edgeroute_cloud_dedup_hits_total{",
        "ray_edgeroute_cloud_auth_failures_total{",
        "ray_edgeroute_cloud_items_total{",
        *(f"{name}{{" for name in dashboard_metrics(cloud=True)),  # the Grafana panels' series
    ]
    text = ""

    def exported() -> bool:
        """One scrape of the export port into `text`: every wanted series is there."""
        nonlocal text
        text = _scrape(port)
        return all(w in text for w in wanted)

    holds_within(exported, 40, 1.0)  # on a timeout the assertion below names what is missing
    missing = [w for w in wanted if w not in text]
    assert not missing, f"not exported: {missing}"


# --- exactly-once across replicas (claims) ---------------------------------------------


@pytest.fixture
def dup_app(cloud_url: str, demo_bundles_dir: Path) -> Iterator[str]:
    """Two replicas under /dup sharing one store (claim timeout 1 s), each model call
    0.3 s slow so concurrent duplicates overlap; deleted (with its store) after."""
    from ray import serve

    from cloud_service.app import deployment_options
    from cloud_service.deployment import CloudReranker
    from cloud_service.result_store import kill_result_store

    settings = CloudServiceSettings(
        bundles_dir=demo_bundles_dir / "cloud",
        num_replicas=2,
        slow_model_s=0.3,
        dedup_claim_timeout_s=1.0,
        result_store_name="dup-test-store",
    )
    options = {**deployment_options(settings), "ray_actor_options": {"num_cpus": 0}}
    serve.run(CloudReranker.options(**options).bind(settings), name="dup", route_prefix="/dup")  # type: ignore[attr-defined]
    try:
        yield f"{cloud_url}/dup"
    finally:
        serve.delete("dup")
        kill_result_store("dup-test-store", settings.ray_namespace)


def _computed(url: str, ids: list[str]) -> dict[str, int]:
    r = httpx.post(f"{url}/v1/stats/computed", json={"request_ids": ids}, timeout=30)
    counts: dict[str, int] = r.json()["computed"]
    return counts


@pytest.mark.ray
@pytest.mark.slow
def test_concurrent_duplicates_across_replicas_are_computed_once(dup_app: str) -> None:
    """The same item sent 8 times at once to two replicas: every call gets the one result,
    7 of them cached (they waited for the claim holder's put), and it is computed once."""
    body = _items(1, "dup-conc")[0]
    responses = asyncio.run(_burst(f"{dup_app}/v1/rerank", [body] * 8))
    assert [r.status_code for r in responses] == [200] * 8
    results = [r.json()["results"][0] for r in responses]
    assert sorted(r["cached"] for r in results) == [False] + [True] * 7
    assert all({**r, "cached": None} == {**results[0], "cached": None} for r in results)
    assert _computed(dup_app, [body["request_id"]]) == {body["request_id"]: 1}


@pytest.mark.ray
@pytest.mark.slow
def test_abandoned_claim_is_taken_over_after_its_timeout(dup_app: str) -> None:
    """A key claimed by a replica that never answers (claimed here directly on the store
    actor) is computed by the next caller once the 1 s claim timeout passed, once."""
    import ray

    body = _items(1, "dup-abandoned")[0]
    httpx.get(f"{dup_app}/healthz", timeout=30)  # the replicas created the store by now
    store = ray.get_actor("dup-test-store", namespace="edgeroute")
    key = (("anonymous", body["request_id"]), "not-this-item")
    assert ray.get(store.settle.remote([], [], [key])) == ["claimed"]
    started = time.monotonic()
    r = httpx.post(f"{dup_app}/v1/rerank", json=body, timeout=30)
    waited = time.monotonic() - started
    assert r.status_code == 200 and r.json()["results"][0]["cached"] is False
    assert waited >= 0.9, f"answered after {waited:.2f} s, before the claim expired"
    # The answering replica sends its put within dedup_flush_delay_s; /v1/stats/computed may
    # be served by the other replica, so wait for the count to show (one call: it stays 1).
    rid = body["request_id"]
    counts: dict[str, int] = {}

    def counted() -> bool:
        """One read of the computed count into `counts`: it shows (is not 0)."""
        nonlocal counts
        counts = _computed(dup_app, [rid])
        return counts != {rid: 0}

    wait_until(counted, 5, 0.05, "the computed count to show the answering replica's put")
    assert counts == {rid: 1}
    assert ray.get(store.stats.remote())["claims_abandoned"] >= 1


@pytest.mark.ray
def test_replica_log_line_is_json_with_the_request_id_and_no_inputs(cloud_url: str) -> None:
    """An answered call's X-Request-ID appears as `request_id` in one JSON `rerank_answered`
    line on the replica's stderr (Ray's worker-*.err), with task, route and latency, and
    none of the input values."""
    import uuid

    from ray._private import worker

    rid = f"log-{uuid.uuid4().hex[:12]}"
    item = {"task": "digits", "request_id": rid, "inputs": [0.123456789] * 64}
    resp = httpx.post(
        f"{cloud_url}/v1/rerank", json=item, headers={**AUTH, "X-Request-ID": rid}, timeout=30
    )
    assert resp.status_code == 200, resp.text
    logs = Path(worker._global_node.get_logs_dir_path())
    lines: list[str] = []

    def logged() -> bool:
        """One pass over the workers' stderr files: lines naming `rid` go to `lines`."""
        for path in logs.glob("worker-*.err"):
            text = path.read_text(errors="replace").splitlines()
            lines.extend(ln for ln in text if rid in ln and ln.startswith("{"))  # not Serve's
        return bool(lines)

    wait_until(logged, 20, 0.2, f"a JSON log line naming {rid}")
    assert len(lines) == 1, lines
    record = json.loads(lines[0])
    assert record["event"] == "rerank_answered" and record["level"] == "info"
    assert record["request_id"] == rid and record["route"] == "cloud"
    assert record["task"] == "digits" and record["items"] == 1
    assert isinstance(record["latency_ms"], float)
    assert "0.123456789" not in lines[0] and "inputs" not in record


# --- Ray's own token authentication ---------------------------------------------------------


@pytest.mark.ray
def test_the_clouds_ray_refuses_a_client_without_the_token(cloud_url: str, tmp_path: Path) -> None:
    """The local Ray instance `init_ray` starts (as `edgeroute cloud serve` does) has token
    authentication on: a driver given its GCS address but no token is refused."""
    import os
    import re
    import subprocess
    import sys

    import ray

    from tests.test_install_profiles import REFUSED

    gcs = ray._private.worker.global_worker.node.gcs_address
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token
    anonymous = subprocess.run(
        [sys.executable, "-c", f"import ray; ray.init(address='{gcs}')"],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert anonymous.returncode != 0
    assert re.search(REFUSED, anonymous.stderr), anonymous.stderr[-2000:]
