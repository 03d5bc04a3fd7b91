"""The README's "Run on a Ray cluster" commands, run as written from a fresh environment of
the cloud install profile, against a real head node with token authentication: the
Serve app answers the escalations of an edge node running from a fresh edge-profile
environment, a Ray client without the token is refused, Serve's HTTP listens on loopback
only, and the README's stop command stops that cluster's processes and no other."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgeroute.processes import free_port
from edgeroute.ray_cluster import cluster_pids, stop_cluster
from tests.doc_blocks import steps
from tests.edge_fixtures import CLOUD_NODE, CLOUD_TOKEN, EdgeNode, policy_text
from tests.profile_envs import ProfileEnv
from tests.test_install_profiles import REFUSED

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Run on a Ray cluster"
PORTS = ("6379", "10001", "52365", "8080", "8000")  # swapped for free ports
TEMP_DIR = "/tmp/edgeroute-ray"


def readme_blocks(tmp: Path) -> list[list[str]]:
    """The section's sh blocks, each a list of commands (continuations joined)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", len(SECTION))]
    blocks = []
    for i, chunk in enumerate(section.split("```sh\n")[1:]):
        page = tmp / f"block-{i}.md"
        page.write_text("```sh\n" + chunk.split("```")[0] + "```\n", encoding="utf-8")
        blocks.append([step.text for step in steps(page)])
    return blocks


def swap(commands: list[str], mapping: dict[str, str]) -> str:
    """The commands as one script with each mapped word replaced (each must occur)."""
    script = "\n".join(commands)
    for old, new in mapping.items():
        pattern = re.compile(rf"(?<![\w/.-]){re.escape(old)}(?![\w-])")
        assert pattern.search(script), f"the README's commands no longer mention {old}"
        script = pattern.sub(new, script)
    return script


def listening_hosts(port: int) -> set[str]:
    """The local addresses (hex, as in /proc/net/tcp*) of sockets listening on TCP `port`."""
    hosts = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(port_hex, 16) == port:
                hosts.add(address)
    return hosts


def test_the_readme_cluster_section_has_a_start_and_a_stop_block(tmp_path: Path) -> None:
    """The section's first block starts the cluster and deploys the app (make secrets ...
    serve run), the second stops it (edgeroute cloud stop)."""
    start, stop = readme_blocks(tmp_path)
    assert start[0] == "make secrets" and any(c.startswith("serve run") for c in start)
    assert stop == [f"edgeroute cloud stop --temp-dir {TEMP_DIR}"]


@pytest.mark.slow
def test_the_readme_cluster_commands_serve_an_edge_node_with_token_auth(
    demo_bundles_dir: Path,
    start_edge: Callable[..., EdgeNode],
    digits_split: tuple[np.ndarray, np.ndarray],
    edge_margins: np.ndarray,
    profile_envs: dict[str, ProfileEnv],
) -> None:
    """`make secrets`, `ray start` with token auth, `edgeroute cloud config`, `serve run`
    and the health wait succeed as written with only the cloud profile installed; unsure
    items of an edge node with only the edge profile are re-ranked on the cluster; a Ray
    client without the token is refused; `edgeroute cloud stop` ends every process of
    the cluster and leaves a bystander naming a path under its temp dir alone."""
    cloud_env, edge_env = profile_envs["cloud"], profile_envs["edge"]
    work = Path(tempfile.mkdtemp(prefix="er-rm-", dir="/tmp"))  # short: Ray's socket paths
    ray_tmp = work / "ray"
    bystander: subprocess.Popen[bytes] | None = None
    try:
        (work / "Makefile").symlink_to(ROOT / "Makefile")
        (work / "models").symlink_to(demo_bundles_dir)
        ports = {p: str(free_port()) for p in PORTS}
        start, stop = readme_blocks(work)
        # the test's own edge node calls the app too: its line joins the generated tokens
        hook = f"echo '{CLOUD_NODE} {CLOUD_TOKEN}' >> secrets/edgeroute-tokens"
        script = swap(start, {**ports, TEMP_DIR: str(ray_tmp)})
        script = script.replace("make secrets", f"make secrets\n{hook}", 1)
        home = work / "home"
        home.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
        env.update(PATH=f"{cloud_env.bin}:{env['PATH']}", HOME=str(home), PYTHONPATH=str(ROOT),
                   RAY_USAGE_STATS_ENABLED="0")  # fmt: skip
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=work, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert cluster_pids(ray_tmp), "expected the head node's processes"
        http_port = int(ports["8000"])
        assert listening_hosts(http_port) == {"0100007F"}, "Serve's HTTP is not loopback-only"

        url = f"http://127.0.0.1:{http_port}"
        edge_cli = (str(edge_env.bin / "edgeroute"),)
        node = start_edge(policy_text(demo_bundles_dir / "edge" / "digits"), url, cli=edge_cli)
        x, _ = digits_split
        routes = [
            node.infer({"task": "digits", "inputs": x[int(i)].tolist()}, timeout=30).json()["route"]
            for i in np.argsort(edge_margins)[:4]
        ]
        assert routes == ["cloud"] * 4

        gcs = f"127.0.0.1:{ports['6379']}"
        anonymous = subprocess.run(
            [str(cloud_env.python), "-c", f"import ray; ray.init(address='{gcs}')"],
            cwd=work, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert anonymous.returncode != 0
        assert re.search(REFUSED, anonymous.stderr), anonymous.stderr[-2000:]

        idle = [sys.executable, "-c", "import signal; signal.pause()"]  # runs until killed
        bystander = subprocess.Popen([*idle, str(ray_tmp / "session_x" / "bystander")])
        stopped = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", swap(stop, {TEMP_DIR: str(ray_tmp)})],
            cwd=work, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert stopped.returncode == 0, stopped.stderr[-2000:]
        assert not cluster_pids(ray_tmp)
        assert bystander.poll() is None, "the stop killed a process outside the cluster"
    finally:
        if bystander is not None:
            bystander.kill()
            bystander.wait()
        _, left = stop_cluster(ray_tmp, grace_s=5)
        shutil.rmtree(work, ignore_errors=True)
        assert not left, f"cluster processes left: {sorted(left)}"
