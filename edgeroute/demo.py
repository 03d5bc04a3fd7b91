"""`edgeroute demo`: the whole product on the digits test split, with a network cut.

Starts the cloud re-ranker (Ray Serve) and the edge node as real processes on loopback,
puts a fault-injecting TCP proxy between them, replays the test split over HTTP, cuts
the link for the middle third, restores it, waits for the queue to drain, and prints
(and optionally writes as JSON) what happened. Returns False if any accepted request has
no final answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from edgeroute import processes
from edgeroute.netproxy import ThreadedFaultProxy

CONCURRENCY = 8


@dataclass
class Outcome:
    index: int
    request_id: str
    truth: str
    route: str = ""
    reason: str = ""
    label: str | None = None
    final: bool = True
    latency_ms: float = 0.0
    final_label: str | None = None
    status: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def run_demo(
    *, models_dir: Path, data_dir: Path, report_path: Path | None, policy_path: Path
) -> bool:
    """Run the demo end to end; print the table; True if nothing was lost."""
    from edgeroute.demo_models import build_demo_bundles, bundles_present, load_test_split

    models_dir = models_dir.resolve()
    if not bundles_present(models_dir):
        print(f"building demo bundles in {models_dir} ...", flush=True)
        build_demo_bundles(models_dir)
    x_test, y_test = load_test_split(models_dir)
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    data_dir = data_dir.resolve()

    cloud_port, edge_port = processes.free_port(), processes.free_port()
    cloud_log, edge_log = data_dir / "cloud.log", data_dir / "edge.log"
    print("starting the cloud re-ranker (Ray Serve, HTTP on 127.0.0.1) ...", flush=True)
    cloud = processes.start(
        processes.edgeroute_cmd(
            "cloud", "serve", "--port", str(cloud_port), "--bundles", str(models_dir / "cloud")
        ),
        cloud_log,
    )
    proxy: ThreadedFaultProxy | None = None
    edge = None
    try:
        processes.wait_http(
            f"http://127.0.0.1:{cloud_port}/healthz", cloud, 180, cloud_log, _starting(cloud_log)
        )
        print("cloud ready", flush=True)
        proxy = ThreadedFaultProxy("127.0.0.1", cloud_port)
        proxy.start()
        print("starting the edge node ...", flush=True)
        edge = processes.start(
            processes.edgeroute_cmd(
                "edge",
                "serve",
                "--policy",
                str(policy_path),
                "--data-dir",
                str(data_dir / "edge"),
                "--port",
                str(edge_port),
                "--cloud-url",
                f"http://127.0.0.1:{proxy.port}",
                "--log-level",
                "warning",
            ),
            edge_log,
            env={"EDGEROUTE_MODELS": str(models_dir)},
        )
        edge_url = f"http://127.0.0.1:{edge_port}"
        processes.wait_http(f"{edge_url}/readyz", edge, 60, edge_log)
        outcomes = asyncio.run(_replay(edge_url, x_test, y_test, proxy))
        drained = _wait_drained(edge_url, timeout_s=120)
        _fetch_finals(edge_url, outcomes)
        status = httpx.get(f"{edge_url}/v1/status", timeout=5).json()
        report = _report(outcomes, status, models_dir, x_test, y_test, drained)
        _print_table(report)
        labels = {o.request_id: o.truth for o in outcomes}
        (data_dir / "labels.json").write_text(json.dumps(labels))
        if report_path is not None:
            report_path.write_text(json.dumps(report, indent=2))
            print(f"\nreport written to {report_path}")
        print(
            f"decision log: {data_dir / 'edge' / 'decisions'}; "
            f"true labels: {data_dir / 'labels.json'}",
            flush=True,
        )
    finally:
        print("stopping the edge node and the cloud ...", flush=True)
        if edge is not None:
            processes.stop(edge)
        if proxy is not None:
            proxy.stop()
        processes.stop(cloud, timeout_s=30, group=False)  # Ray stops its own processes
    return bool(report["lost"] == 0)


def _starting(log_path: Path) -> Callable[[float], None]:
    """Prints how long the cloud has been starting and its last log event, if any."""

    def show(elapsed_s: float) -> None:
        event = ""
        with contextlib.suppress(OSError):
            for line in reversed(log_path.read_text(errors="replace").splitlines()):
                found = re.search(r'"event": ?"([a-z_]+)"', line)
                if found:
                    event = f" (last: {found.group(1)})"
                    break
        print(f"  cloud still starting: {elapsed_s:.0f} s{event}", flush=True)

    return show


async def _replay(
    edge_url: str, x: np.ndarray, y: np.ndarray, proxy: ThreadedFaultProxy
) -> list[Outcome]:
    n = len(x)
    cut_at, restore_at = n // 3, 2 * n // 3
    outcomes = [Outcome(i, f"demo-{i:05d}", str(int(y[i]))) for i in range(n)]
    sem = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(base_url=edge_url, timeout=10.0) as client:

        async def one(o: Outcome) -> None:
            async with sem:
                body = {"task": "digits", "inputs": x[o.index].tolist(), "request_id": o.request_id}
                t0 = time.perf_counter()
                resp = await client.post("/v1/infer", json=body)
                o.latency_ms = (time.perf_counter() - t0) * 1000
                o.status = resp.status_code
                data = resp.json()
                if resp.status_code in (200, 202):
                    o.route, o.reason = data["route"], data["reason"]
                    o.label, o.final = data["label"], data["final"]
                else:
                    o.route, o.reason = "rejected", data["error"]["code"]

        phases = [
            (0, cut_at, "online"),
            (cut_at, restore_at, "cloud cut off"),
            (restore_at, n, "cloud restored"),
        ]
        for start, end, name in phases:
            if name == "cloud cut off":
                proxy.set_mode("down")
            elif name == "cloud restored":
                proxy.set_mode("pass")
            print(f"  requests {start:4d}-{end - 1:4d}: {name}", flush=True)
            await asyncio.gather(*(one(outcomes[i]) for i in range(start, end)))
    return outcomes


def _wait_drained(edge_url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        depth = httpx.get(f"{edge_url}/v1/status", timeout=5).json()["queue"]["depth"]
        if depth == 0:
            return True
        time.sleep(0.25)
    return False


def _fetch_finals(edge_url: str, outcomes: list[Outcome]) -> None:
    with httpx.Client(base_url=edge_url, timeout=5) as client:
        for o in outcomes:
            if o.status not in (200, 202):
                continue
            if o.final:
                o.final_label = o.label
                continue
            resp = client.get(f"/v1/results/{o.request_id}")
            data = resp.json() if resp.status_code == 200 else {}
            o.extra["result_status"] = data.get("status", f"http_{resp.status_code}")
            if data.get("status") == "done":
                o.final_label = data.get("label")


def _offline_accuracies(models_dir: Path, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from cloud_service.model import CloudModel
    from router.wire import RerankItem, RerankResult
    from runtime.bundle import load_bundle
    from runtime.onnx_model import OnnxModel

    edge = OnnxModel(load_bundle(models_dir / "edge" / "digits"))
    cloud = CloudModel.load(models_dir / "cloud" / "digits")
    labels = np.array(edge.labels)
    edge_pred = labels[edge.predict(x.astype(np.float32)).probs.argmax(axis=1)]
    items = [
        RerankItem(task="digits", request_id=f"acc-{i}", inputs=row.tolist())
        for i, row in enumerate(x)
    ]
    cloud_pred = np.array(
        [r.label if isinstance(r, RerankResult) else "" for r in cloud.rerank(items)]
    )
    truth = y.astype(int).astype(str)
    return float((edge_pred == truth).mean()), float((cloud_pred == truth).mean())


def _pcts(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    arr = np.array(values)
    return {
        "n": len(values),
        "p50": round(float(np.percentile(arr, 50)), 2),
        "p95": round(float(np.percentile(arr, 95)), 2),
        "max": round(float(arr.max()), 2),
    }


def _report(
    outcomes: list[Outcome],
    status: dict[str, Any],
    models_dir: Path,
    x: np.ndarray,
    y: np.ndarray,
    drained: bool,
) -> dict[str, Any]:
    accepted = [o for o in outcomes if o.status in (200, 202)]
    enqueued = [o for o in accepted if not o.final]
    synced = [o for o in enqueued if o.extra.get("result_status") == "done"]
    lost = [o for o in accepted if o.final_label is None]
    edge_acc, cloud_acc = _offline_accuracies(models_dir, x, y)
    final_acc = sum(o.final_label == o.truth for o in accepted) / max(1, len(outcomes))
    escalated = [o for o in accepted if o.route == "cloud" or not o.final]
    by_route: dict[str, list[float]] = {}
    for o in accepted:
        by_route.setdefault(o.route, []).append(o.latency_ms)
    cloud_status = status["cloud"]
    price = cloud_status.get("cost_today", 0.0) / max(1, cloud_status.get("calls_today", 0) or 1)
    return {
        "requests": len(outcomes),
        "routes": dict(Counter(o.route for o in outcomes)),
        "reasons": dict(Counter(f"{o.route}/{o.reason}" for o in outcomes)),
        "accuracy": {
            "final": round(final_acc, 4),
            "edge_only": round(edge_acc, 4),
            "cloud_only": round(cloud_acc, 4),
        },
        "escalation_rate": round(len(escalated) / max(1, len(outcomes)), 4),
        "cloud": {
            "live_calls": cloud_status["calls"],
            "synced_calls": len(synced),
            "calls_today": cloud_status["calls_today"],
            "cost_today": cloud_status["cost_today"],
            "currency": cloud_status["currency"],
            "price_per_call": round(price, 6),
        },
        "queued": len(enqueued),
        "synced": len(synced),
        "lost": len(lost),
        "queue_drained": drained,
        "latency_ms": {route: _pcts(v) for route, v in sorted(by_route.items())},
    }


def _print_table(r: dict[str, Any]) -> None:
    print("\n=== edgeroute demo: digits test split ===")
    print(f"requests: {r['requests']}")
    print("\nroute / reason                     count")
    for key, n in sorted(r["reasons"].items()):
        print(f"  {key:<32} {n:5d}")
    acc = r["accuracy"]
    print(
        f"\naccuracy: final {acc['final']:.4f} | edge-only {acc['edge_only']:.4f} | "
        f"cloud-only {acc['cloud_only']:.4f}"
    )
    print(f"escalated or queued: {r['escalation_rate']:.1%}")
    c = r["cloud"]
    print(
        f"cloud calls: live {c['live_calls']}, synced {c['synced_calls']}; budget ledger "
        f"{c['calls_today']} calls, cost {c['cost_today']} {c['currency']}"
    )
    print("\nlatency (client-measured, ms)      n     p50     p95     max")
    for route, p in r["latency_ms"].items():
        if p.get("n"):
            print(f"  {route:<30} {p['n']:5d} {p['p50']:7.2f} {p['p95']:7.2f} {p['max']:7.2f}")
    print(
        f"\nqueued {r['queued']}, synced {r['synced']}, lost {r['lost']}"
        f"{'' if r['queue_drained'] else ' (queue did NOT drain in time)'}"
    )
