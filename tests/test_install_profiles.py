"""Install profiles: every lock pins every package with hashes, the edge and client
profiles stay free of Ray, the tools and the test tools (in the locks, in what their code
imports, and in a fresh edge-only environment)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.profile_envs import ProfileEnv

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "requirements"
PROFILES = ("client", "edge", "cloud", "tools", "dev")
NOT_ON_EDGE = {"ray", "scikit-learn", "scipy", "matplotlib", "skl2onnx", "pytest", "mypy",
               "ruff", "hypothesis", "schemathesis", "grpcio", "opentelemetry-sdk"}  # fmt: skip
NOT_IN_CLIENT = {"numpy", "onnxruntime", "onnx", "fastapi", "uvicorn", "diskcache", *NOT_ON_EDGE}
EDGE_MAX_MB = 215  # measured 208 MB; the 150 MB goal is not met (docs/install.md)
REFUSED = r"AuthenticationError|UNAUTHENTICATED|[Aa]uthentication token"
_PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)")


def pins(profile: str) -> dict[str, str]:
    """{package: version} of a profile's lock; asserts each pin carries a sha256 hash."""
    pinned: dict[str, str] = {}
    current = ""
    hashed: set[str] = set()
    for line in (LOCKS / f"{profile}.lock").read_text().splitlines():
        found = _PIN.match(line)
        if found:
            current = found.group(1).lower().replace("_", "-")
            pinned[current] = found.group(2)
        elif line.strip().startswith("--hash=sha256:") and current:
            hashed.add(current)
    assert pinned, f"{profile}.lock pins nothing"
    assert set(pinned) == hashed, f"{profile}.lock: pins without hashes {set(pinned) - hashed}"
    return pinned


@pytest.mark.parametrize("profile", PROFILES)
def test_each_profile_lock_pins_every_package_with_hashes(profile: str) -> None:
    """Every `name==version` of the profile's lock is followed by sha256 hashes, and has
    the version the dev lock pins (one version of a package across profiles)."""
    dev = pins("dev")
    for name, version in pins(profile).items():
        assert dev.get(name) == version, (
            f"{profile}.lock: {name}=={version}, dev has {dev.get(name)}"
        )


def test_edge_and_client_locks_hold_no_cloud_tools_or_test_packages() -> None:
    """The edge lock has onnxruntime but no Ray, scikit-learn, matplotlib or test tools;
    the client lock has none of those nor the edge's server and model runtime."""
    edge, client, cloud = pins("edge"), pins("client"), pins("cloud")
    assert "onnxruntime" in edge and "diskcache" in edge
    assert not NOT_ON_EDGE & set(edge), NOT_ON_EDGE & set(edge)
    assert not NOT_IN_CLIENT & set(client), NOT_IN_CLIENT & set(client)
    assert "ray" in cloud and not {"scikit-learn", "matplotlib", "pytest"} & set(cloud)


def _modules_after(code: str) -> set[str]:
    """Top-level module names loaded after running `code` in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    return {name.split(".")[0] for name in json.loads(out.stdout.splitlines()[-1])}


def test_the_edge_node_and_its_cli_import_no_cloud_or_tools_package() -> None:
    """Building the edge app and the CLI loads no Ray, scikit-learn or matplotlib (the
    import guard behind the edge profile); the client loads no numpy, onnxruntime or
    edge node code."""
    edge = _modules_after(
        "import edgeroute.cli, edge_node.node, edge_node.http.app, edgeroute.cli_edge\n"
        "import edgeroute.cli_queue, edgeroute.cli_model, edgeroute.cli_policy"
    )
    assert not {"ray", "sklearn", "matplotlib", "scipy", "skl2onnx", "pytest"} & edge
    client = _modules_after("import edgeroute.client")
    assert not {"numpy", "onnxruntime", "edge_node", "cloud_service", "fastapi"} & client


@pytest.mark.slow
def test_a_fresh_edge_environment_cannot_import_the_cloud_or_the_tools(
    profile_envs: dict[str, ProfileEnv],
) -> None:
    """An environment with only the edge profile cannot import ray, sklearn, matplotlib or
    pytest, and its packages stay under EDGE_MAX_MB; the cloud profile's can import ray.
    (tests/test_cluster_readme.py runs a node from the edge environment against a
    cluster from the cloud environment.)"""
    edge, cloud = profile_envs["edge"], profile_envs["cloud"]
    for module in ("ray", "sklearn", "matplotlib", "pytest"):
        probe = subprocess.run([str(edge.python), "-c", f"import {module}"], capture_output=True)
        assert probe.returncode != 0, f"{module} is importable in the edge environment"
    node_imports = [str(edge.python), "-c", "import onnxruntime, edge_node.node"]
    assert subprocess.run(node_imports).returncode == 0
    assert subprocess.run([str(cloud.python), "-c", "import ray.serve"]).returncode == 0
    sizes = {"edge": round(edge.installed_mb), "cloud": round(cloud.installed_mb)}
    print(f"installed sizes (MB): {sizes}")
    assert sizes["edge"] <= EDGE_MAX_MB, sizes
