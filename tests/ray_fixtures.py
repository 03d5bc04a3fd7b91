"""Pytest plugin: one Ray instance and one deployed cloud app per test session.

Enable with `pytest_plugins = ["tests.ray_fixtures"]` in conftest. Starting Ray costs
seconds and `serve.run` a few more, so both are session-scoped; tests using them should be
marked `@pytest.mark.ray`.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_service.settings import CloudServiceSettings


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A fresh local Ray (127.0.0.1, dashboard off) for the session, shut down at the end."""
    import ray

    from cloud_service.server import init_ray

    init_ray(num_cpus=2)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def demo_bundles_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo bundles built once per session; returns the *output* dir (edge/, cloud/)."""
    from edgeroute.demo_models import build_demo_bundles

    out = tmp_path_factory.mktemp("demo-bundles")
    build_demo_bundles(out)
    return out


@pytest.fixture(scope="session")
def cloud_settings(
    demo_bundles_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> CloudServiceSettings:
    """Settings of the session's cloud app: demo cloud bundles, a free port, auth on."""
    tokens = tmp_path_factory.mktemp("cloud-auth") / "tokens.txt"
    tokens.write_text("test-node test-token\nnode-b token-b\n", encoding="utf-8")
    return CloudServiceSettings(
        bundles_dir=demo_bundles_dir / "cloud", port=free_port(), tokens_file=tokens
    )


@pytest.fixture(scope="session")
def cloud_url(ray_session: None, cloud_settings: CloudServiceSettings) -> Iterator[str]:
    """Base URL of the cloud app running on the session's Ray; stopped at the end."""
    from cloud_service.server import start_cloud_in_process, stop_cloud

    url = start_cloud_in_process(cloud_settings)
    try:
        yield url
    finally:
        stop_cloud(cloud_settings, shutdown_ray=False)
