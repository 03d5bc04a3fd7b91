"""The shipped Serve config deployed onto a real, separate local Ray cluster, with traffic
through a real edge node; the cluster is stopped by pid afterwards."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from edgeroute.processes import free_port
from tests.cluster_utils import BIN, LocalCluster, cluster_pids, start_head, stop_cluster
from tests.edge_fixtures import CLOUD_NODE, CLOUD_TOKEN, EdgeNode, policy_text
from tests.waiting import wait_until

CONFIG = Path(__file__).resolve().parent.parent / "cloud_service" / "serve_config.yaml"


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    """A head node in its own short temp dir (unix socket paths are length-limited)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="er-ray-", dir="/tmp"))
    try:
        yield start_head(temp_dir)
    finally:
        left = stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"cluster processes left: {sorted(left)}"


def deploy_config(cluster: LocalCluster, bundles: Path, tokens: Path, http_port: int) -> Path:
    """The shipped config with this machine's paths and port, deployed with `serve run
    --non-blocking` (Serve's controller API: works with the dashboard off)."""
    config = yaml.safe_load(CONFIG.read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": http_port}
    config["proxy_location"] = "HeadOnly"
    app = config["applications"][0]
    app["args"].update(bundles_dir=str(bundles), tokens_file=str(tokens))
    path = cluster.temp_dir / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    subprocess.run(
        [str(BIN / "serve"), "run", "--address", cluster.address, "--non-blocking", str(path)],
        env=cluster.env,
        check=True,
        timeout=120,
        capture_output=True,
        cwd=cluster.temp_dir,
    )
    return path


def wait_ready(url: str, timeout_s: float = 90.0) -> dict[str, object]:
    """Poll GET url/healthz until it answers 200; returns its JSON."""
    ok: list[httpx.Response] = []

    def ready() -> bool:
        """One GET /healthz; a 200 is kept in `ok`."""
        r = httpx.get(f"{url}/healthz", timeout=5)
        if r.status_code == 200:
            ok.append(r)
        return bool(ok)

    wait_until(
        ready, timeout_s, 0.5, "the app to become ready on the cluster", ignore=(httpx.HTTPError,)
    )
    data: dict[str, object] = ok[0].json()
    return data


@pytest.mark.slow
def test_serve_config_on_a_local_cluster_serves_an_edge_node(
    cluster: LocalCluster,
    demo_bundles_dir: Path,
    start_edge: Callable[..., EdgeNode],
    digits_split: tuple[np.ndarray, np.ndarray],
    edge_margins: np.ndarray,
) -> None:
    """serve_config.yaml deploys onto `ray start --head`; unsure edge items are re-ranked
    there with the edge's token, and the cluster's processes all stop afterwards."""
    assert cluster_pids(cluster.temp_dir), "expected the head node's processes"
    tokens = cluster.temp_dir / "tokens.txt"
    tokens.write_text(f"{CLOUD_NODE} {CLOUD_TOKEN}\n")
    http_port = free_port()
    deploy_config(cluster, demo_bundles_dir / "cloud", tokens, http_port)
    url = f"http://127.0.0.1:{http_port}"
    assert wait_ready(url)["tasks"] == {"digits": "digits-cloud-1.0.0"}
    assert httpx.post(f"{url}/v1/rerank", json={}, timeout=10).status_code == 401

    node = start_edge(policy_text(demo_bundles_dir / "edge" / "digits"), url)
    x, _ = digits_split
    unsure = np.argsort(edge_margins)[:6]
    routes = []
    for i in unsure:
        r = node.infer({"task": "digits", "inputs": x[int(i)].tolist()}, timeout=30).json()
        routes.append((r["route"], r["model_version"].split("-")[1]))
    assert routes == [("cloud", "cloud")] * len(unsure)
