"""Safe model updates on the edge node: install and swap under traffic, failed updates that
leave the old version serving, rollback, canary/shadow runs judged by the canary rule,
the CLI, and the policy's canary fields. Real nodes on 127.0.0.1, real onnxruntime."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from edge_node.lifecycle.model_store import ModelStore
from edgeroute import processes
from edgeroute.cli import main
from router.model_updates import (
    POLICY_BUNDLE,
    InstallRequest,
)
from tests.edge_fixtures import EdgeNode
from tests.model_update_support import (
    V1,
    V2,
    V3,
    Traffic,
    build_versions,
    make_version,
    trusted_policy,
)
from tests.waiting import holds_within, wait_until

DEAD_CLOUD = "http://127.0.0.1:9"  # edge-only task: no cloud is ever called


@pytest.fixture(scope="module")
def bundles(demo_bundles_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The signed versions of `tests.model_update_support.build_versions`."""
    return build_versions(demo_bundles_dir / "edge" / "digits", tmp_path_factory.mktemp("v"))


def _update(node: EdgeNode) -> dict[str, Any]:
    state: dict[str, Any] = node.status()["models_update"]["digits"]  # type: ignore[index]
    return state


def _metric(node: EdgeNode, name: str, **labels: str) -> float:
    text = httpx.get(f"{node.url}/metrics", timeout=5).text
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def _cli(*args: str) -> Any:
    return CliRunner().invoke(main, ["model", *map(str, args)])


def _start(start_edge: Callable[..., EdgeNode], bundles: dict[str, Path], **kw: Any) -> EdgeNode:
    return start_edge(trusted_policy(bundles["v1"], bundles["pub"], **kw), DEAD_CLOUD)


# ---- the CLI on a data dir, no node ----------------------------------------------------------


def test_cli_install_refuses_bad_bundles_and_records_good_ones(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    """`model install` exits 1 with the reason for an unsigned, NaN-producing or
    mislabelled bundle and installs nothing; a good one is copied and requested;
    `model list` shows it; rollback with no previous version is refused."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(trusted_policy(bundles["v1"], bundles["pub"]))
    data = tmp_path / "data"
    base = ("install", "--data-dir", data, "--policy", policy)
    for name, code in (
        ("unsigned", "unsigned_bundle"),
        ("nan", "smoke_failed"),
        ("labels", "labels_mismatch"),
        ("broken", "invalid_bundle"),
    ):
        r = _cli(*base[:1], bundles[name], *base[1:])
        assert r.exit_code == 1 and f"REJECTED ({code})" in r.output, (name, r.output)
    store = ModelStore(data / "models")
    assert store.versions("digits") == [] and store.tasks() == []

    r = _cli("install", bundles["v2"], *base[1:], "--canary", "0.2")
    assert r.exit_code == 0, r.output
    assert store.versions("digits") == [V2]
    state = store.read_state("digits")
    assert state.current == POLICY_BUNDLE and state.pending is not None
    assert (state.pending.version, state.pending.mode, state.pending.fraction) == (
        V2,
        "fraction",
        0.2,
    )
    listed = json.loads(_cli("list", "--data-dir", data, "--json").output)
    assert listed["digits"]["installed"] == [V2] and listed["digits"]["pending"]["version"] == V2
    assert "pending:   install digits-edge-2 (fraction)" in _cli("list", "--data-dir", data).output

    conflicting = make_version(bundles["v3"], tmp_path / "conflict", V2, bundles["key"])
    r = _cli("install", conflicting, *base[1:])
    assert r.exit_code == 1 and "REJECTED (version_conflict)" in r.output
    r = _cli("install", bundles["v2"], *base[1:], "--canary", "0.2", "--shadow")
    assert r.exit_code == 2 and "exclude each other" in r.output
    r = _cli("rollback", "--data-dir", data, "--task", "digits")
    assert r.exit_code == 1 and "no previous version" in r.output


# ---- a real node under traffic ---------------------------------------------------------------


def test_failed_updates_under_traffic_keep_the_old_version_serving(
    start_edge: Callable[..., EdgeNode],
    bundles: dict[str, Path],
    digits_split: tuple[np.ndarray, np.ndarray],
) -> None:
    """Drop-ins that fail mid-load (NaN smoke inference, hash-valid non-ONNX bytes,
    truncated model, other labels) and a corrupted store version are refused while 3
    clients send requests: no request fails, every answer is from the old version, each
    failure is counted in /metrics and reported in /v1/status and the state file."""
    node = _start(start_edge, bundles)
    store = ModelStore(node.data_dir / "models")
    expected = {
        "nan": "non-finite",
        "broken": "onnxruntime cannot load",
        "truncated": "sha256",
        "labels": "in another order than the graph's classes",
    }
    with Traffic(node.url, digits_split[0][:50]) as traffic:
        for i, (name, reason) in enumerate(expected.items()):
            shutil.copytree(bundles[name], store.incoming / name)
            wait_until(
                lambda i=i: len(list(store.rejected.glob("*.reason.txt"))) == i + 1,
                10,
                0.05,
                what=f"the store to reject {name}",
            )
            (why,) = store.rejected.glob(f"{name}-*.reason.txt")
            assert reason in why.read_text(), why.read_text()
            assert holds_within(lambda r=reason: r in (_update(node)["error"] or ""), 5, 0.05), (
                f"status never reported {reason!r}: {_update(node)}"
            )
            assert _update(node)["state"] == "failed" and _update(node)["serving"] == V1
        # A version that passed install but is corrupt on disk when the node loads it.
        shutil.copytree(bundles["truncated"], store.task_dir("digits") / "digits-edge-truncated")
        store.request(
            "digits", InstallRequest(version="digits-edge-truncated", requested_at=time.time())
        )
        wait_until(
            lambda: store.read_state("digits").pending is None,
            10,
            0.05,
            what="the node to take up the corrupt version's install request",
        )
        assert traffic.wait_each(V1, traffic.mark())  # answers after the failed load
    answers = traffic.all()
    assert len(answers) > 50
    assert all(status == 200 for status, _, _ in answers), {a[0] for a in answers}
    assert {version for _, version, _ in answers} == {V1}
    state = store.read_state("digits")
    assert state.current == POLICY_BUNDLE and state.last is not None
    assert state.last.result == "failed" and "sha256" in (state.last.detail or "")
    assert _metric(node, "edgeroute_model_loads_total", task="digits", result="error") == 5
    assert _metric(node, "edgeroute_model_updates_total", task="digits", result="failed") == 5
    assert _metric(node, "edgeroute_model_loads_total", task="digits", result="ok") == 1
    assert list(store.incoming.iterdir()) == []


def test_install_swaps_under_traffic_rollback_and_it_survives_restart_and_reload(
    start_edge: Callable[..., EdgeNode],
    bundles: dict[str, Path],
    digits_split: tuple[np.ndarray, np.ndarray],
) -> None:
    """`model install` swaps v1 -> v2 and `model rollback` back to v1 while 3 clients send
    requests: none fails and each client sees v1, then v2, then v1 (no flapping). The
    installed version then wins over the policy's bundle across a restart and a reload."""
    node = _start(start_edge, bundles)
    store = ModelStore(node.data_dir / "models")
    install = ("install", bundles["v2"], "--data-dir", node.data_dir, "--policy", node.policy_path)
    with Traffic(node.url, digits_split[0][:50]) as traffic:
        assert traffic.wait_each(V1, traffic.mark())
        r = _cli(*install)
        assert r.exit_code == 0, r.output
        wait_until(lambda: _update(node)["serving"] == V2, 10, 0.05, what=f"{V2} to serve")
        assert traffic.wait_each(V2, traffic.mark())
        r = _cli("rollback", "--data-dir", node.data_dir, "--task", "digits")
        assert r.exit_code == 0 and "to @policy" in r.output, r.output
        wait_until(lambda: _update(node)["serving"] == V1, 10, 0.05, what=f"{V1} to serve")
        assert traffic.wait_each(V1, traffic.mark())
    answers = traffic.all()
    assert all(status == 200 for status, _, _ in answers), {a[0] for a in answers}
    for client in traffic.seen:
        runs = [v for i, (_, v, _) in enumerate(client) if i == 0 or client[i - 1][1] != v]
        assert runs == [V1, V2, V1], runs
    state = store.read_state("digits")
    assert (state.current, state.previous) == (POLICY_BUNDLE, V2)
    assert _metric(node, "edgeroute_model_updates_total", task="digits", result="applied") == 2
    assert _metric(node, "edgeroute_model_loads_total", task="digits", result="ok") == 3

    r = _cli(*install)  # already in the store: requested again
    assert r.exit_code == 0 and "already installed" in r.output, r.output
    wait_until(lambda: _update(node)["serving"] == V2, 10, 0.05, what=f"{V2} to serve again")
    processes.stop(node.proc, timeout_s=10)
    again = start_edge(node.policy_path.read_text(), DEAD_CLOUD, node.data_dir, name="again")
    assert again.status()["models"] == {"digits": V2}
    assert _update(again)["source"] == "store"
    again.policy_path.write_text(
        again.policy_path.read_text().replace("threshold: 0.5", "threshold: 0.4")
    )
    r = httpx.post(f"{again.url}/v1/policy/reload", timeout=30)
    assert r.json()["result"] == "applied", r.text
    assert (
        again.infer({"task": "digits", "inputs": digits_split[0][0].tolist()}).json()[
            "model_version"
        ]
        == V2
    )


def test_canary_rolls_back_on_its_own_when_the_new_model_disagrees(
    start_edge: Callable[..., EdgeNode],
    bundles: dict[str, Path],
    digits_split: tuple[np.ndarray, np.ndarray],
) -> None:
    """A canary (half of the requests) of a model that answers shifted labels is rolled
    back automatically after min_requests comparisons: no request fails, the canary's
    answers carry its version, and afterwards only v1 answers."""
    node = _start(
        start_edge, bundles, canary="{min_requests: 40, min_agreement: 0.9, max_error_rate: 0.05}"
    )
    store = ModelStore(node.data_dir / "models")
    with Traffic(node.url, digits_split[0][:50]) as traffic:
        r = _cli(
            "install",
            bundles["v3"],
            "--data-dir",
            node.data_dir,
            "--policy",
            node.policy_path,
            "--canary",
            "0.5",
        )
        assert r.exit_code == 0, r.output
        assert holds_within(lambda: _update(node)["state"] == "rolled_back", 30, 0.05), (
            f"the canary was never rolled back: {_update(node)}"
        )
        after = traffic.mark()
        assert traffic.wait_each(V1, [n + 1 for n in after])
    answers = traffic.all()
    assert all(status == 200 for status, _, _ in answers), {a[0] for a in answers}
    assert {v for _, v, _ in answers} == {V1, V3}
    for client, n in zip(traffic.seen, after, strict=True):  # n: possibly still in flight
        assert {v for _, v, _ in client[n + 1 :]} == {V1}
    update = _update(node)
    assert update["serving"] == V1 and update["canary"] is None
    assert "agreement" in update["detail"] and update["version"] == V3
    state = store.read_state("digits")
    assert state.canary is None and state.current == POLICY_BUNDLE
    assert state.last is not None and state.last.result == "rolled_back"
    assert _metric(node, "edgeroute_model_updates_total", task="digits", result="rolled_back") == 1


def test_shadow_run_promotes_an_agreeing_model_on_its_own(
    start_edge: Callable[..., EdgeNode],
    bundles: dict[str, Path],
    digits_split: tuple[np.ndarray, np.ndarray],
) -> None:
    """A shadow run of a model that agrees with the current one never serves it, then
    promotes it after min_requests comparisons; rollback then returns to v1."""
    node = _start(start_edge, bundles, canary="{min_requests: 30, min_agreement: 0.99}")
    store = ModelStore(node.data_dir / "models")
    with Traffic(node.url, digits_split[0][:50]) as traffic:
        assert traffic.wait_each(V1, traffic.mark())
        r = _cli(
            "install",
            bundles["v2"],
            "--data-dir",
            node.data_dir,
            "--policy",
            node.policy_path,
            "--shadow",
        )
        assert r.exit_code == 0, r.output
        assert holds_within(lambda: _update(node)["state"] == "promoted", 30, 0.05), (
            f"the shadow run was never promoted: {_update(node)}"
        )
        assert traffic.wait_each(V2, traffic.mark())
    answers = traffic.all()
    assert all(status == 200 for status, _, _ in answers)
    for client in traffic.seen:
        runs = [v for i, (_, v, _) in enumerate(client) if i == 0 or client[i - 1][1] != v]
        assert runs == [V1, V2], runs
    state = store.read_state("digits")
    assert (state.current, state.previous, state.canary) == (V2, POLICY_BUNDLE, None)
    assert _metric(node, "edgeroute_model_updates_total", task="digits", result="promoted") == 1
    started = _metric(node, "edgeroute_model_updates_total", task="digits", result="canary_started")
    assert started == 1
    assert "agreement 1.000" in _update(node)["detail"]
    r = _cli("rollback", "--data-dir", node.data_dir, "--task", "digits")
    assert r.exit_code == 0, r.output
    wait_until(lambda: _update(node)["serving"] == V1, 10, 0.05, what=f"rollback to {V1} to serve")


def test_node_starts_on_the_policy_bundle_when_the_installed_version_is_corrupt(
    start_edge: Callable[..., EdgeNode], bundles: dict[str, Path], tmp_path: Path
) -> None:
    """An installed version that no longer verifies at start-up is skipped: the node
    serves the policy's bundle, counts and reports the failure, and fixes the state."""
    data = tmp_path / "data"
    store = ModelStore(data / "models")
    shutil.copytree(bundles["truncated"], store.task_dir("digits") / "digits-edge-truncated")
    store.update_state(
        "digits", lambda s: s.model_copy(update={"current": "digits-edge-truncated"})
    )
    node = start_edge(trusted_policy(bundles["v1"], bundles["pub"]), DEAD_CLOUD, data)
    assert node.status()["models"] == {"digits": V1}
    assert _metric(node, "edgeroute_model_loads_total", task="digits", result="error") == 1
    wait_until(
        lambda: store.read_state("digits").current == POLICY_BUNDLE,
        10,
        0.05,
        what="the state file to fall back to the policy's bundle",
    )
    update = _update(node)
    assert update["state"] == "failed" and "sha256" in update["error"]
    assert update["version"] == "digits-edge-truncated"


def test_rollback_ends_a_canary_which_survives_a_policy_reload_until_then(
    start_edge: Callable[..., EdgeNode],
    bundles: dict[str, Path],
    digits_split: tuple[np.ndarray, np.ndarray],
) -> None:
    """A canary keeps running (and counting) across a policy reload; `model rollback` ends
    it and keeps v1; `rollback --to` then switches to any installed version."""
    node = _start(start_edge, bundles, canary="{min_requests: 1000000}")
    store = ModelStore(node.data_dir / "models")
    with Traffic(node.url, digits_split[0][:50]):
        r = _cli(
            "install",
            bundles["v3"],
            "--data-dir",
            node.data_dir,
            "--policy",
            node.policy_path,
            "--canary",
            "0.5",
        )
        assert r.exit_code == 0, r.output
        wait_until(
            lambda: (_update(node)["canary"] or {}).get("compared", 0) > 5,
            10,
            0.05,
            what="the canary to compare more than 5 answers",
        )
        before = _update(node)["canary"]["compared"]
        node.policy_path.write_text(
            node.policy_path.read_text().replace("threshold: 0.5", "threshold: 0.4")
        )
        assert httpx.post(f"{node.url}/v1/policy/reload", timeout=30).json()["result"] == "applied"
        assert _update(node)["canary"]["compared"] >= before
        r = _cli("rollback", "--data-dir", node.data_dir, "--task", "digits")
        assert r.exit_code == 0 and "end the canary of digits-edge-3-rolled" in r.output
        assert holds_within(lambda: _update(node)["state"] == "rolled_back", 10, 0.05), (
            f"rollback never ended the canary: {_update(node)}"
        )
    state = store.read_state("digits")
    assert (state.current, state.previous, state.canary) == (POLICY_BUNDLE, None, None)
    assert _update(node)["serving"] == V1
    r = _cli("rollback", "--data-dir", node.data_dir, "--task", "digits", "--to", V3)
    assert r.exit_code == 0, r.output
    wait_until(
        lambda: _update(node)["serving"] == V3, 10, 0.05, what=f"rollback --to {V3} to serve"
    )
    state = store.read_state("digits")
    assert (state.current, state.previous) == (V3, POLICY_BUNDLE)
