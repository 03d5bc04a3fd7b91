"""Benchmarks of the edge node's product-backend path (issue 7), each against a baseline
measured in the same run: in-process route+infer vs raw InferenceSession.run; HTTP local
answers at 1 and 16 connections vs a minimal FastAPI + onnxruntime endpoint; one batch
of 64 vs 64 single calls; escalation overhead vs the cloud service called directly (on
shared cores, the goal; and, report only, with the cloud and the edge on a core each).

HTTP load comes from `benchmarks.loadgen` (a bounded, wrk-like client in its own process;
no wrk needed). Servers are real processes on 127.0.0.1, stopped at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from benchmarks import loadgen
from benchmarks.pin import pinned
from benchmarks.stats import line, record, summary
from edgeroute import processes
from router.wire import FIRST_SEND_HEADER, NODE_HEADER

MODELS = Path(os.environ.get("EDGEROUTE_MODELS", "models"))
WARMUP = 200


def _policy(edge_bundle: Path, threshold: float) -> str:
    return f"""\
version: 1
node: {{id: bench-node}}
cloud: {{url: "http://127.0.0.1:9", request_timeout_ms: 2000}}
queue: {{max_items: 100000, max_bytes: 1073741824, on_full: reject}}
tasks:
  digits: {{edge_bundle: {edge_bundle}, threshold: {threshold}, score: margin, deadline_ms: 5000}}
"""


def _inputs() -> tuple[np.ndarray, np.ndarray, Path]:
    if not (MODELS / "edge" / "digits" / "manifest.json").exists():
        from edgeroute.demo_models import build_demo_bundles

        build_demo_bundles(MODELS)
    from edgeroute.demo_models import load_test_split

    x, _ = load_test_split(MODELS)
    from router.scores import margin
    from runtime.onnx_model import OnnxModel

    model = OnnxModel.load(MODELS / "edge" / "digits")
    margins = np.array([margin(p.tolist()) for p in model.predict(x).probs])
    return x, margins, MODELS / "edge" / "digits"


def bench_in_process(tmp: Path, x: np.ndarray, sure: int, bundle: Path) -> list[dict[str, Any]]:
    """route + infer for one item vs raw InferenceSession.run, p50; plus the whole request.

    route + infer is `EdgeService.route` on a prepared batch of one item (a single
    request is a batch of one): the edge model's inference, the local result (top-k,
    deciding score), `decide`, and the inference and decision latency metrics, as every
    request runs them. The whole in-process request
    (`EdgeService.infer`: input validation, route + infer, metrics, decision-log record,
    answer body) is reported alongside, against the same baseline.
    """
    from edge_node.node import Node
    from edge_node.prepared import PreparedItem, prepare
    from edge_node.settings import EdgeSettings
    from router.edge_api import InferRequest

    (tmp / "inproc.yaml").write_text(_policy(bundle.resolve(), 0.5))
    node = Node(
        EdgeSettings(policy_path=tmp / "inproc.yaml", data_dir=tmp / "inproc", log_sample_rate=0.0)
    )
    svc = node.service
    req = InferRequest(task="digits", inputs=x[sure].tolist())
    active = svc.active
    items = [p for p in prepare(active, [req], node.client.ids.new) if isinstance(p, PreparedItem)]
    sess = svc.active.models["digits"].bundle.session
    name, arr = sess.get_inputs()[0].name, x[sure : sure + 1].astype(np.float32)
    n = 5000

    def raw() -> list[float]:
        out = []
        for i in range(n + WARMUP):
            t = time.perf_counter()
            sess.run(None, {name: arr})
            if i >= WARMUP:
                out.append((time.perf_counter() - t) * 1e6)
        return out

    def route() -> list[float]:
        out = []
        for i in range(n + WARMUP):
            t = time.perf_counter()
            decision = svc.route(active, items, t)[0].decision
            if i >= WARMUP:
                out.append((time.perf_counter() - t) * 1e6)
        assert decision.route == "edge", decision
        return out

    async def whole() -> list[float]:
        out = []
        for i in range(n + WARMUP):
            t = time.perf_counter()
            await svc.infer(req)
            if i >= WARMUP:
                out.append((time.perf_counter() - t) * 1e6)
        return out

    # interleaved rounds, so drift on a shared machine does not favour one side
    base_l: list[float] = []
    route_l: list[float] = []
    whole_l: list[float] = []
    for _ in range(3):
        base_l += raw()
        route_l += route()
        whole_l += asyncio.run(whole())
    base, mine, full = summary(base_l), summary(route_l), summary(whole_l)
    node.close_stores()
    print("in process, one item (us)")
    print(line("raw InferenceSession.run", base, "us"))
    print(line("EdgeService.route (route+infer)", mine, "us"))
    print(line("EdgeService.infer (whole request)", full, "us"))
    r = mine["p50"] / base["p50"]
    return [
        record("in_process_p50_vs_raw_session", mine["p50"], base["p50"], "<= 2x", "us", r <= 2),
        record(
            "in_process_whole_request_p50_vs_raw_session",
            full["p50"],
            base["p50"],
            "report only",
            "us",
            None,
        ),
    ]


def _loadgen(url: str, body: bytes, connections: int, requests: int, tmp: Path) -> dict[str, Any]:
    f = tmp / f"body-{len(body)}.json"
    f.write_bytes(body)
    argv = [sys.executable, "-m", "benchmarks.loadgen", url, str(f), "--connections",
            str(connections), "--requests", str(requests), "--warmup", str(WARMUP)]  # fmt: skip
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    res: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    res["summary"] = summary(res["latencies_ms"])
    res["rps"] = len(res["latencies_ms"]) / res["seconds"]
    return res


def _serve(
    argv: list[str], log: Path, ready: str, timeout_s: float = 120
) -> subprocess.Popen[bytes]:
    proc = processes.start(argv, log)
    processes.wait_http(ready, proc, timeout_s, log)
    return proc


HTTP_ROUNDS = 5
"""Interleaved rounds per connection count: each round runs the baseline and the edge node
once, in an order alternated per round; throughput is the median round, latency
percentiles pool every round's samples (so drift on a shared machine hits both alike)."""
HTTP_REQUESTS = {1: 2000, 16: 4000}
"""Timed requests per round and server, by connection count."""


def _pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from interleaved rounds: median rps, pooled latencies, summed errors."""
    lat = [x for r in runs for x in r["latencies_ms"]]
    return {"rps": float(np.median([r["rps"] for r in runs])), "summary": summary(lat),
            "errors": sum(r["errors"] for r in runs)}  # fmt: skip


def _http_records(conns: int, o: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    print(f"HTTP local answer, {conns} connection(s), {HTTP_ROUNDS} rounds x "
          f"{HTTP_REQUESTS[conns]} requests each (ms)")  # fmt: skip
    print(line(f"baseline FastAPI+ORT ({b['rps']:.0f} req/s)", b["summary"], "ms"))
    print(line(f"edge node ({o['rps']:.0f} req/s, {o['errors']} errors)", o["summary"], "ms"))
    # An erroring server answers fast: a run with any error meets no goal.
    clean = o["errors"] == 0 and b["errors"] == 0
    if not clean:
        print(f"!! errors: edge {o['errors']}, baseline {b['errors']}: goals not met")
    os_, bs = o["summary"], b["summary"]
    return [
        record(f"http_c{conns}_throughput", o["rps"], b["rps"], ">= 1.0x", "req/s",
               clean and o["rps"] >= b["rps"]),
        record(f"http_c{conns}_p99", os_["p99"], bs["p99"], "<= 1.25x", "ms",
               clean and os_["p99"] <= 1.25 * bs["p99"]),
        record(f"http_c{conns}_p50", os_["p50"], bs["p50"], "report only", "ms", None),
    ]  # fmt: skip


def _batch_records(url: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """64 items in one call vs 64 single calls, as a product backend sends them (httpx, the
    client library's transport), and again with the lean load generator's client."""
    batch_body = orjson.dumps({"items": items})
    singles = [orjson.dumps(it) for it in items]
    hdr = {"content-type": "application/json"}
    rounds, tb, ts = 30, [], []
    with httpx.Client(timeout=30) as c:
        for _ in range(5):
            c.post(url, content=batch_body, headers=hdr)
        for _ in range(rounds):
            t = time.perf_counter()
            assert c.post(url, content=batch_body, headers=hdr).status_code == 200
            tb.append(time.perf_counter() - t)
            t = time.perf_counter()
            for s in singles:
                c.post(url, content=s, headers=hdr)
            ts.append(time.perf_counter() - t)
    ib, isg = 64 * rounds / sum(tb), 64 * rounds / sum(ts)
    print("batch of 64 in one call vs 64 single calls, httpx client (ms per 64 items)")
    print(line("64 single calls", summary([t * 1e3 for t in ts]), "ms"))
    print(line("one batch call", summary([t * 1e3 for t in tb]), "ms"))
    recs = [record("batch64_items_per_s", ib, isg, ">= 10x", "items/s", ib / isg >= 10)]
    lean_b = asyncio.run(loadgen.call_each(url, [batch_body] * rounds))
    lean_s = asyncio.run(loadgen.call_each(url, singles * rounds))
    lb, ls = 64 * rounds / (sum(lean_b) / 1e3), 64 * rounds / (sum(lean_s) / 1e3)
    print("the same with the lean load generator's client (ms per call)")
    print(line("single calls", summary(lean_s), "ms"))
    print(line("batch calls", summary(lean_b), "ms"))
    recs.append(record("batch64_items_per_s_lean_client", lb, ls, "report only", "items/s", None))
    return recs


def bench_http(tmp: Path, x: np.ndarray, sure: int, bundle: Path) -> list[dict[str, Any]]:
    """Local answers over HTTP at 1 and 16 connections vs the FastAPI baseline; batch."""
    recs: list[dict[str, Any]] = []
    (tmp / "http.yaml").write_text(_policy(bundle.resolve(), 0.5))
    ep, bp = processes.free_port(), processes.free_port()
    edge_argv = processes.edgeroute_cmd("edge", "serve", "--policy", str(tmp / "http.yaml"),
        "--data-dir", str(tmp / "http"), "--port", str(ep), "--log-level", "warning",
        "--log-sample-rate", "0")  # fmt: skip
    edge = _serve(edge_argv, tmp / "edge.log", f"http://127.0.0.1:{ep}/readyz")
    base = _serve([sys.executable, "-m", "benchmarks.baselines.fastapi_onnx", "--bundle",
                   str(bundle), "--port", str(bp)], tmp / "base.log",
                  f"http://127.0.0.1:{bp}/healthz")  # fmt: skip
    try:
        arms = {
            "edge": (f"http://127.0.0.1:{ep}/v1/infer",
                     orjson.dumps({"task": "digits", "inputs": x[sure].tolist()})),
            "base": (f"http://127.0.0.1:{bp}/infer", orjson.dumps({"inputs": x[sure].tolist()})),
        }  # fmt: skip
        for conns, n in HTTP_REQUESTS.items():
            runs: dict[str, list[dict[str, Any]]] = {"edge": [], "base": []}
            for k in range(HTTP_ROUNDS):
                for arm in ("edge", "base") if k % 2 else ("base", "edge"):
                    url, body = arms[arm]
                    runs[arm].append(_loadgen(url, body, conns, n, tmp))
            recs += _http_records(conns, _pooled(runs["edge"]), _pooled(runs["base"]))
        items = [{"task": "digits", "inputs": x[i].tolist()} for i in range(64)]
        recs += _batch_records(arms["edge"][0], items)
    finally:
        processes.stop(edge)
        processes.stop(base)
    return recs


def _two_cpus() -> tuple[int, int] | None:
    """Two CPUs this process may use (the first two), or None with fewer."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


def bench_escalation(
    tmp: Path, x: np.ndarray, unsure: int, bundle: Path, *, cpus: tuple[int, int] | None = None
) -> list[dict[str, Any]]:
    """p50 of a cloud-routed request through the edge minus the cloud's own p50.

    By default every process shares every core (the goal's measurement). With `cpus`
    (cloud_cpu, edge_cpu) the cloud (Ray and all its processes) runs on the first and the
    edge node and this client on the second, as an edge device and a cloud cluster would
    each have their own machine: it shows what of the added time is the edge's own work
    and what is Ray's processes taking the edge's core. Report only."""
    cloud_cpu, edge_cpu = cpus if cpus is not None else (None, None)

    def on(cpu: int | None, argv: list[str]) -> list[str]:
        return argv if cpu is None else pinned(cpu, argv)

    cp, ep = processes.free_port(), processes.free_port()
    cloud = _serve(on(cloud_cpu, processes.edgeroute_cmd("cloud", "serve", "--port", str(cp),
                   "--bundles", str(MODELS / "cloud"), "--log-sample-rate", "0")),
                   tmp / "cloud.log", f"http://127.0.0.1:{cp}/healthz", 300)  # fmt: skip
    edge = None
    mask = os.sched_getaffinity(0) if edge_cpu is not None else None
    try:
        (tmp / "esc.yaml").write_text(_policy(bundle.resolve(), 1.0))
        edge = _serve(on(edge_cpu, processes.edgeroute_cmd("edge", "serve", "--policy",
                      str(tmp / "esc.yaml"), "--data-dir", str(tmp / "esc"),
                      "--port", str(ep), "--cloud-url", f"http://127.0.0.1:{cp}",
                      "--log-level", "warning", "--log-sample-rate", "0")),
                      tmp / "edge-esc.log", f"http://127.0.0.1:{ep}/readyz")  # fmt: skip
        if edge_cpu is not None:
            os.sched_setaffinity(0, {edge_cpu})
        n, mine, direct = 300, [], []
        item = x[unsure].tolist()
        with httpx.Client(timeout=30) as c:
            first = c.post(
                f"http://127.0.0.1:{ep}/v1/infer", json={"task": "digits", "inputs": item}
            )
            cands = [cd["label"] for cd in first.json()["candidates"]]
            for i in range(n + 50):
                t = time.perf_counter()
                r = c.post(
                    f"http://127.0.0.1:{ep}/v1/infer", json={"task": "digits", "inputs": item}
                )
                dt = (time.perf_counter() - t) * 1e3
                if i >= 50:
                    mine.append(dt)
                    assert r.json()["route"] == "cloud", r.text
                body = {
                    "task": "digits",
                    "request_id": f"direct-{i}",
                    "inputs": item,
                    "candidates": cands,
                }
                t = time.perf_counter()
                c.post(
                    f"http://127.0.0.1:{cp}/v1/rerank",
                    json=body,
                    # what the edge sends for a request whose id it generated (see wire.py)
                    headers={NODE_HEADER: "bench-direct", FIRST_SEND_HEADER: "1"},
                )
                dt = (time.perf_counter() - t) * 1e3
                if i >= 50:
                    direct.append(dt)
        sm, sd = summary(mine), summary(direct)
        where = "shared cores" if cpus is None else f"cloud on cpu {cloud_cpu}, edge on {edge_cpu}"
        print(f"escalation: edge node (cloud-routed) vs cloud called directly (ms, {where})")
        print(line("cloud /v1/rerank direct", sd, "ms"))
        print(line("edge /v1/infer routed to cloud", sm, "ms"))
        added = sm["p50"] - sd["p50"]
        return [
            record(
                "escalation_added_p50" if cpus is None else "escalation_added_p50_own_cores",
                sm["p50"],
                sd["p50"],
                "adds <= 2 ms" if cpus is None else "report only",
                "ms",
                added <= 2.0 if cpus is None else None,
                ratio=sm["p50"] / sd["p50"],
            )
        ]
    finally:
        if mask is not None:
            os.sched_setaffinity(0, mask)
        if edge is not None:
            processes.stop(edge)
        processes.stop(cloud, timeout_s=60)


def bench_escalation_fast_cloud(
    tmp: Path, x: np.ndarray, unsure: int, bundle: Path
) -> list[dict[str, Any]]:
    """The same comparison against a trivial re-ranker (bench_queue's fake, its own process):
    the edge's own cost of an escalation, without Ray's processes competing for the cores.
    Report only: the goal is stated against the real cloud service."""
    fp, ep = processes.free_port(), processes.free_port()
    fake = _serve([sys.executable, "-m", "benchmarks.bench_queue", "--serve", str(fp)],
                  tmp / "fake.log", f"http://127.0.0.1:{fp}/healthz", 60)  # fmt: skip
    edge = None
    try:
        (tmp / "fast.yaml").write_text(_policy(bundle.resolve(), 1.0))
        edge = _serve(processes.edgeroute_cmd("edge", "serve", "--policy", str(tmp / "fast.yaml"),
                      "--data-dir", str(tmp / "fast"), "--port", str(ep), "--cloud-url",
                      f"http://127.0.0.1:{fp}", "--log-level", "warning", "--log-sample-rate",
                      "0"), tmp / "edge-fast.log", f"http://127.0.0.1:{ep}/readyz")  # fmt: skip
        item, n, warm = x[unsure].tolist(), 1000, 100
        mine, direct = [], []
        with httpx.Client(timeout=30) as c:
            for i in range(n + warm):
                t = time.perf_counter()
                r = c.post(
                    f"http://127.0.0.1:{ep}/v1/infer", json={"task": "digits", "inputs": item}
                )
                dt = (time.perf_counter() - t) * 1e3
                assert r.json()["route"] == "cloud", r.text
                body = {"items": [{"task": "digits", "request_id": f"f-{i}", "inputs": item}]}
                t = time.perf_counter()
                assert c.post(f"http://127.0.0.1:{fp}/v1/rerank", json=body).status_code == 200
                if i >= warm:
                    mine.append(dt)
                    direct.append((time.perf_counter() - t) * 1e3)
        sm, sd = summary(mine), summary(direct)
        print("escalation to a trivial re-ranker: edge node vs re-ranker called directly (ms)")
        print(line("fake /v1/rerank direct", sd, "ms"))
        print(line("edge /v1/infer routed to it", sm, "ms"))
        return [
            record(
                "escalation_added_p50_trivial_cloud",
                sm["p50"],
                sd["p50"],
                "report only",
                "ms",
                None,
                ratio=sm["p50"] / sd["p50"],
            )
        ]
    finally:
        if edge is not None:
            processes.stop(edge)
        processes.stop(fake)


def main() -> list[dict[str, Any]]:
    """Run every comparison once; print p50/p90/p99/max and return the records."""
    x, margins, bundle = _inputs()
    sure, unsure = int(np.argmax(margins)), int(np.argmin(margins))
    recs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgeroute-bench-") as d:
        tmp = Path(d)
        recs += bench_in_process(tmp, x, sure, bundle)
        recs += bench_http(tmp, x, sure, bundle)
        recs += bench_escalation(tmp, x, unsure, bundle)
        if (cpus := _two_cpus()) is not None:
            recs += bench_escalation(tmp, x, unsure, bundle, cpus=cpus)
        recs += bench_escalation_fast_cloud(tmp, x, unsure, bundle)
    return recs


if __name__ == "__main__":
    main()
