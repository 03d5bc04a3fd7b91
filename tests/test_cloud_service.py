"""The cloud re-ranking service: the real Ray Serve app over real HTTP on 127.0.0.1 (one
app per session). (Its pure pieces with fakes: tests/test_cloud_core.py.)"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_service.settings import CloudServiceSettings
from router.errors import InputError
from router.wire import RerankItem

NODE = "test-node"
AUTH = {"X-Edgeroute-Node": NODE, "Authorization": "Bearer test-token"}


# --- the real Serve app over HTTP ---------------------------------------------------


@pytest.fixture(scope="module")
def digits(demo_bundles_dir: Path) -> list[list[float]]:
    """Test-split inputs of the demo digits task (64 floats each)."""
    from edgeroute.demo_models import load_test_split

    x, _ = load_test_split(demo_bundles_dir)
    return [[float(v) for v in row] for row in x[:80]]


@pytest.fixture(scope="module")
def local_model(demo_bundles_dir: Path) -> Any:
    """The same cloud model loaded in-process, to check the service's answers."""
    from cloud_service.model import CloudModel

    return CloudModel.load(demo_bundles_dir / "cloud" / "digits")


@pytest.fixture
def client(cloud_url: str) -> Iterator[httpx.Client]:
    """An HTTP client on the session's cloud app, authenticated as test-node."""
    with httpx.Client(base_url=cloud_url, headers=AUTH, timeout=30.0) as c:
        yield c


def digit_item(
    rid: str, inputs: list[float], candidates: list[str] | None = None
) -> dict[str, Any]:
    return {"task": "digits", "request_id": rid, "inputs": inputs, "candidates": candidates}


@pytest.mark.ray
def test_healthz_lists_tasks_and_versions(client: httpx.Client) -> None:
    """GET /healthz answers ok with the digits task and its cloud model version."""
    r = client.get("/healthz", headers={"Authorization": ""})
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "tasks": {"digits": "digits-cloud-1.0.0"}}


@pytest.mark.ray
def test_single_item_matches_local_model(
    client: httpx.Client, digits: list[list[float]], local_model: Any
) -> None:
    """One item is answered with the same label/score as the model run locally."""
    r = client.post("/v1/rerank", json=digit_item("single-1", digits[0]))
    assert r.status_code == 200
    [got] = r.json()["results"]
    [want] = local_model.rerank([RerankItem(**digit_item("single-1", digits[0]))])
    assert got["label"] == want.label and got["scored"] == "all_labels"
    assert got["score"] == pytest.approx(want.score, abs=1e-6)
    assert len(got["candidates"]) == 10 and got["cached"] is False


@pytest.mark.ray
def test_batch_keeps_order_and_isolates_bad_items(
    client: httpx.Client, digits: list[list[float]], local_model: Any
) -> None:
    """A batch answers in item order; a wrong-length item fails alone."""
    items = [digit_item(f"batch-{i}", digits[i]) for i in range(1, 9)]
    items.insert(3, digit_item("batch-bad", [1.0, 2.0]))
    r = client.post("/v1/rerank", json={"items": items})
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["request_id"] for x in results] == [i["request_id"] for i in items]
    assert results[3]["error"]["field"] == "inputs"
    want = local_model.rerank([RerankItem(**i) for i in items if i["request_id"] != "batch-bad"])
    assert [x["label"] for x in results if "label" in x] == [w.label for w in want]


@pytest.mark.ray
def test_candidates_restrict_and_renormalise(
    client: httpx.Client, digits: list[list[float]]
) -> None:
    """With candidates, only those labels are scored (renormalised to sum 1)."""
    r = client.post("/v1/rerank", json=digit_item("cand-1", digits[10], ["3", "5", "8"]))
    [got] = r.json()["results"]
    assert got["scored"] == "candidates"
    assert sorted(c["label"] for c in got["candidates"]) == ["3", "5", "8"]
    assert sum(c["score"] for c in got["candidates"]) == pytest.approx(1.0, abs=1e-6)
    assert got["label"] == got["candidates"][0]["label"]


@pytest.mark.ray
def test_repeated_item_is_computed_once(client: httpx.Client, digits: list[list[float]]) -> None:
    """The same item sent 5 times is computed once; repeats are identical and cached."""
    before = client.get("/v1/stats").json()
    answers = [
        client.post("/v1/rerank", json=digit_item("dedup-1", digits[20])).json() for _ in range(5)
    ]
    after = client.get("/v1/stats").json()
    results = [a["results"][0] for a in answers]
    assert [r["cached"] for r in results] == [False, True, True, True, True]
    assert all({**r, "cached": None} == {**results[0], "cached": None} for r in results)
    assert after["computed_total"] - before["computed_total"] == 1
    assert after["dedup_hits"] - before["dedup_hits"] == 4
    assert after["computed_by_key_max"] == 1


@pytest.mark.ray
def test_first_send_skips_the_claim_and_its_retries_are_cached(
    client: httpx.Client, digits: list[list[float]]
) -> None:
    """A call marked X-Edgeroute-First-Send is computed without a claim (a stored id sent
    marked with another item is computed, not a conflict; first put wins), and 4 unmarked
    retries of a first send are answered from the store: that key is computed once."""
    first = {"X-Edgeroute-First-Send": "1"}
    before = client.get("/v1/stats").json()
    stored = client.post("/v1/rerank", json=digit_item("first-send-0", digits[22])).json()
    reused = client.post(
        "/v1/rerank", json=digit_item("first-send-0", digits[23]), headers=first
    ).json()["results"][0]
    assert "error" not in reused and reused["cached"] is False
    again = client.post("/v1/rerank", json=digit_item("first-send-0", digits[22])).json()
    assert again["results"][0] == {**stored["results"][0], "cached": True}

    body = digit_item("first-send-1", digits[21])
    answers = [client.post("/v1/rerank", json=body, headers=first)]
    answers += [client.post("/v1/rerank", json=body) for _ in range(4)]
    results = [a.json()["results"][0] for a in answers]
    assert [r["cached"] for r in results] == [False, True, True, True, True]
    computed = client.post(
        "/v1/stats/computed", json={"request_ids": ["first-send-0", "first-send-1"]}
    ).json()["computed"]
    assert computed == {"first-send-0": 1, "first-send-1": 1}
    after = client.get("/v1/stats").json()
    assert after["replica"]["first_send_items"] - before["replica"]["first_send_items"] == 2
    assert after["conflicts"] - before["conflicts"] == 1


@pytest.mark.ray
def test_unknown_paths_and_wrong_methods_get_fastapis_answers(client: httpx.Client) -> None:
    """Routing without FastAPI keeps its answers: 404 and 405 (with Allow) as
    `{"detail": ...}`, 307 to the path without a trailing slash."""
    r = client.get("/v1/nope")
    assert (r.status_code, r.json()) == (404, {"detail": "Not Found"})
    r = client.get("/v1/rerank")
    assert (r.status_code, r.json()) == (405, {"detail": "Method Not Allowed"})
    assert r.headers["allow"] == "POST"
    r = client.post("/healthz")
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    r = client.get("/healthz/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"].endswith("/healthz")


def test_route_path_strips_the_route_prefix() -> None:
    """The path is matched relative to Serve's route prefix (the ASGI root_path)."""
    from cloud_service.http_routes import route_path

    assert route_path({"path": "/batched/v1/rerank", "root_path": "/batched"}) == "/v1/rerank"
    assert route_path({"path": "/v1/rerank", "root_path": ""}) == "/v1/rerank"
    assert route_path({"path": "/batchedx/v1", "root_path": "/batched"}) == "/batchedx/v1"
    assert route_path({"path": "/batched", "root_path": "/batched"}) == ""


@pytest.mark.ray
def test_dedup_is_per_node(cloud_url: str, digits: list[list[float]]) -> None:
    """The same request_id from another node is computed for that node, not served cached."""
    body = digit_item("per-node-1", digits[21])
    with httpx.Client(base_url=cloud_url, timeout=30.0) as c:
        a = c.post("/v1/rerank", json=body, headers=AUTH).json()["results"][0]
        b = c.post(
            "/v1/rerank",
            json=body,
            headers={"X-Edgeroute-Node": "node-b", "Authorization": "Bearer token-b"},
        ).json()["results"][0]
    assert (a["cached"], b["cached"]) == (False, False)


@pytest.mark.ray
def test_concurrent_single_items_are_batched(
    cloud_url: str, digits: list[list[float]], local_model: Any
) -> None:
    """32 concurrent single-item requests are all answered right, sharing model runs."""

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=cloud_url, headers=AUTH, timeout=60.0) as c:
            return await asyncio.gather(
                *(
                    c.post("/v1/rerank", json=digit_item(f"conc-{i}", digits[30 + i]))
                    for i in range(32)
                )
            )

    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * 32
    got = [r.json()["results"][0]["label"] for r in responses]
    want = local_model.rerank(
        [RerankItem(**digit_item(f"conc-{i}", digits[30 + i])) for i in range(32)]
    )
    assert got == [w.label for w in want]
    with httpx.Client(base_url=cloud_url, headers=AUTH) as c:
        assert c.get("/v1/stats").json()["replica"]["max_batch_size_seen"] > 1


@pytest.mark.ray
@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        (b"{oops", 400, "malformed_json", None),
        (b'{"task":"digits","request_id":"r","inputs":"x"}', 422, "invalid_input", "inputs"),
        (
            b'{"task":"digits","request_id":"r","inputs":[1],"extra":1}',
            422,
            "invalid_input",
            "extra",
        ),
        (b'{"task":"digits","request_id":"r","inputs":[true]}', 422, "invalid_input", "inputs.0"),
    ],
)
def test_bad_requests_get_json_errors(
    client: httpx.Client, body: bytes, status: int, code: str, field: str | None
) -> None:
    """Unparseable bodies are 400 and schema faults 422, as JSON naming code and field."""
    r = client.post("/v1/rerank", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status
    assert r.json()["error"]["code"] == code and r.json()["error"]["field"] == field


@pytest.mark.ray
def test_unknown_task_is_a_per_item_failure(client: httpx.Client) -> None:
    """An item for a task the cloud does not serve fails with unknown_task (HTTP 200)."""
    r = client.post("/v1/rerank", json={"task": "nope", "request_id": "u1", "inputs": [1.0]})
    assert r.status_code == 200
    assert r.json()["results"][0]["error"]["code"] == "unknown_task"


@pytest.mark.ray
def test_cloud_checks_inputs_with_the_edge_rules(
    client: httpx.Client, demo_bundles_dir: Path, digits: list[list[float]]
) -> None:
    """Wrong length and out-of-range inputs fail per item with the edge's own message and
    field (one input validation), and the valid item of the batch is answered."""
    from router.inputs import coerce_inputs
    from router.manifest import MANIFEST_FILE, parse_manifest

    folder = demo_bundles_dir / "cloud" / "digits"
    spec = parse_manifest((folder / MANIFEST_FILE).read_bytes(), str(folder)).input
    short, high = [1.0, 2.0], [99.0] * len(digits[0])
    items = [
        {"task": "digits", "request_id": "rules-1", "inputs": short},
        {"task": "digits", "request_id": "rules-2", "inputs": high},
        digit_item("rules-3", digits[3]),
    ]
    results = client.post("/v1/rerank", json={"items": items}).json()["results"]
    for raw, got in zip((short, high), results[:2], strict=True):
        with pytest.raises(InputError) as edge:
            coerce_inputs(raw, spec)
        assert got["error"] == edge.value.to_dict()
    assert "label" in results[2]


@pytest.mark.ray
def test_auth_rejects_missing_wrong_and_revoked_tokens(
    cloud_url: str, cloud_settings: CloudServiceSettings, digits: list[list[float]]
) -> None:
    """No token, another node's token, and a token rotated in place (same size, same mtime,
    as `cp -p` leaves it) all get 401 JSON errors."""
    body = digit_item("auth-1", digits[5])
    tokens = cloud_settings.tokens_file
    assert tokens is not None
    original = tokens.read_text()
    with httpx.Client(base_url=cloud_url, timeout=30.0) as c:
        assert (
            c.post("/v1/rerank", json=body, headers={"X-Edgeroute-Node": NODE}).status_code == 401
        )
        wrong = c.post(
            "/v1/rerank",
            json=body,
            headers={"X-Edgeroute-Node": NODE, "Authorization": "Bearer token-b"},
        )
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
        assert c.post("/v1/rerank", json=body, headers=AUTH).status_code == 200
        st = os.stat(tokens)
        rotated = original.replace("test-token", "TEST-TOKEN")
        assert rotated != original and len(rotated) == len(original)
        try:
            tokens.write_text(rotated)
            os.utime(tokens, ns=(st.st_atime_ns, st.st_mtime_ns))
            assert os.stat(tokens).st_size == st.st_size
            assert c.post("/v1/rerank", json=body, headers=AUTH).status_code == 401
            rotated_auth = {**AUTH, "Authorization": "Bearer TEST-TOKEN"}
            assert c.post("/v1/rerank", json=body, headers=rotated_auth).status_code == 200
        finally:
            tokens.write_text(original)
        assert c.post("/v1/rerank", json=body, headers=AUTH).status_code == 200


@pytest.mark.ray
@pytest.mark.slow
def test_run_cloud_serves_until_sigterm_then_cleans_up(
    demo_bundles_dir: Path, tmp_path: Path
) -> None:
    """run_cloud writes the ready file, serves, and on SIGTERM exits 0 leaving no Ray process."""
    import signal
    import subprocess
    import sys

    from tests.ray_fixtures import free_port
    from tests.waiting import wait_until

    ready = tmp_path / "ready"
    settings = CloudServiceSettings(
        bundles_dir=demo_bundles_dir / "cloud",
        port=free_port(),
        result_store_name="run-cloud-test-store",
    )
    code = (
        "import sys; from pathlib import Path; from cloud_service.server import run_cloud; "
        "from cloud_service.settings import CloudServiceSettings; "
        "run_cloud(CloudServiceSettings.model_validate_json(sys.argv[1]), "
        "ready_file=Path(sys.argv[2]))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, settings.model_dump_json(), str(ready)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:

        def started() -> bool:
            """The ready file exists; fails at once when run_cloud exited before writing it."""
            if ready.exists():
                return True
            assert proc.poll() is None, "run_cloud exited before it was ready"
            return False

        wait_until(started, 120, 0.2, "run_cloud's ready file")
        url = ready.read_text().strip()
        assert httpx.get(url + "/healthz", timeout=10).json()["status"] == "ok"
        children = descendants(proc.pid)
        assert children, "expected Ray processes under run_cloud"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        assert f"edgeroute cloud ready {url}" in out
        wait_until(
            lambda: not any(Path(f"/proc/{pid}").exists() for pid in children),
            15,
            0.2,
            "the Ray processes to exit after run_cloud stopped",
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def descendants(root: int) -> set[int]:
    """Pids of every live process below `root` (read from /proc; Linux only)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found
