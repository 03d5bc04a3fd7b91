"""Safe policy reload on a real edge node process: atomic swaps under concurrent traffic,
invalid or half-written files keep the last good policy, file-change and SIGHUP triggers."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from edge_node.lifecycle.policy_reloader import restart_only_changes
from router.policy_loader import parse_policy, policy_revision
from tests.edge_fixtures import EdgeNode, policy_text
from tests.waiting import wait_until

DEAD_CLOUD = "http://127.0.0.1:9"  # no cloud is needed: policy B's budget is zero


def _policies(bundle: Path) -> tuple[str, str]:
    """A: hybrid, low threshold -> edge/confident. B: high threshold and a zero call budget
    -> edge/budget_exhausted. Same input, different route reason, no cloud call."""
    a = policy_text(bundle, threshold=0.05)
    b = policy_text(bundle, threshold=0.99, cost="  daily_calls: 0")
    return a, b


def _invalid(good: str, i: int) -> str:
    """Broken variants: a half-written file, a typo, a bad value."""
    cut = good.index("tasks:")
    return [
        good[:cut] + "tasks:\n  digits:\n    edge_bun",
        good.replace("threshold:", "treshold:"),
        good.replace("on_full: reject", "on_full: sometimes"),
    ][i % 3]


def _mid_confidence_input(margins: np.ndarray) -> int:
    ok = np.flatnonzero((margins > 0.3) & (margins < 0.9))
    return int(ok[0])


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def test_reload_under_concurrent_traffic(
    start_edge: Callable[..., EdgeNode],
    demo_bundles_dir: Path,
    digits_split: tuple[np.ndarray, np.ndarray],
    edge_margins: np.ndarray,
) -> None:
    """Alternate valid and invalid files 50 times while 4 clients send requests: no request
    fails, and every response matches, as a whole, the policy whose revision it reports."""
    a, b = _policies(demo_bundles_dir / "edge" / "digits")
    expected = {policy_revision(a): "confident", policy_revision(b): "budget_exhausted"}
    node = start_edge(a, DEAD_CLOUD)
    x = digits_split[0][_mid_confidence_input(edge_margins)].tolist()
    stop = threading.Event()
    seen: list[tuple[int, str | None, str | None]] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=node.url, timeout=10) as http:
            while not stop.is_set():
                r = http.post("/v1/infer", json={"task": "digits", "inputs": x})
                body = r.json()
                with lock:
                    seen.append((r.status_code, body.get("policy_revision"), body.get("reason")))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    failed_reloads = 0
    try:
        with httpx.Client(base_url=node.url, timeout=30) as http:
            for i in range(50):
                good = b if i % 2 == 0 else a
                _write(node.policy_path, good)
                r = http.post("/v1/policy/reload")
                assert r.status_code == 200 and r.json()["result"] == "applied", r.text
                mark, applied = len(seen), policy_revision(good)  # traffic runs under it
                wait_until(
                    lambda m=mark, v=applied: any(rev == v for _, rev, _ in seen[m:]),
                    10,
                    what="a request answered under the applied policy",
                )
                _write(node.policy_path, _invalid(good, i))
                r = http.post("/v1/policy/reload")
                assert r.status_code == 422, r.text
                failed_reloads += 1
                policy_state = http.get("/v1/status").json()["policy"]
                assert policy_state["revision"] == policy_revision(good)
                assert policy_state["last_error"] and policy_state["last_attempt_at"]
                mark = len(seen)  # and after the refused reload
                wait_until(
                    lambda m=mark: len(seen) > m, 10, what="a request answered after the refusal"
                )
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert len(seen) > 100
    assert all(status == 200 for status, _, _ in seen), {s for s, _, _ in seen}
    mismatched = [(rev, reason) for _, rev, reason in seen if expected.get(rev or "") != reason]
    assert not mismatched, mismatched[:5]
    assert {reason for _, _, reason in seen} == {"confident", "budget_exhausted"}
    assert failed_reloads == 50


def test_file_change_and_sighup_reload(
    start_edge: Callable[..., EdgeNode], demo_bundles_dir: Path
) -> None:
    """Writing a new valid file is picked up by the poller within a few seconds; a change
    to a restart-only section is refused and reported; SIGHUP reloads."""
    a, b = _policies(demo_bundles_dir / "edge" / "digits")
    node = start_edge(a, DEAD_CLOUD)

    def policy_state() -> dict[str, object]:
        state = node.status()["policy"]
        assert isinstance(state, dict)
        return state

    _write(node.policy_path, b)
    wait_until(
        lambda: policy_state()["revision"] == policy_revision(b),
        10,
        0.1,
        what="the poller to apply the changed file",
    )
    assert policy_state()["last_trigger"] == "file_change"

    restart_only = b.replace("batch_size: 32", "batch_size: 16")
    _write(node.policy_path, restart_only)
    wait_until(
        lambda: policy_state()["last_result"] == "failed",
        10,
        0.1,
        what="the poller to refuse the restart-only change",
    )
    state = policy_state()
    assert state["revision"] == policy_revision(b)
    assert "sync.batch_size" in str(state["last_error"])

    # The poller has seen this content; only SIGHUP (or HTTP) triggers the next attempt.
    _write(node.policy_path, a)
    node.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: policy_state()["revision"] == policy_revision(a),
        10,
        0.1,
        what="SIGHUP to apply the rewritten file",
    )
    assert policy_state()["last_error"] is None


def test_restart_only_changes_are_named() -> None:
    """restart_only_changes lists changed keys outside tasks/cost, and nothing else."""
    a, _ = _policies(Path("/b"))
    pa = parse_policy(a)
    pb = parse_policy(a.replace("interval_ms: 50", "interval_ms: 60").replace("0.05", "0.5"))
    assert restart_only_changes(pa, pb) == ["sync.interval_ms"]
    assert restart_only_changes(pa, parse_policy(a.replace("0.05", "0.5"))) == []
