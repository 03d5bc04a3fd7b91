"""docker-compose.yml and the Dockerfile cannot run here (no Docker engine): check that
every command, port and path they use exists in the project and agrees with the configs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import click
import yaml

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = "/app"


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def resolve_click(args: list[str]) -> click.Command:
    """The click command `edgeroute ARGS...` names, with its options parsed (not run)."""
    from edgeroute.cli import main

    assert args[0] == "edgeroute"
    command: click.Command = main
    rest = args[1:]
    while isinstance(command, click.Group):
        sub = command.get_command(click.Context(command), rest[0])
        assert sub is not None, f"no command {rest[0]!r} in {args}"
        command, rest = sub, rest[1:]
    command.make_context(args[0], list(rest), resilient_parsing=False)
    return command


def host_port(mapping: str) -> tuple[int, int]:
    host, container = mapping.split("#")[0].strip().split(":")
    return int(host), int(container)


def test_dockerfile_copies_only_existing_paths() -> None:
    """Every COPY source in the Dockerfile exists in the project."""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and not line.startswith("COPY --from="):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source


def test_cloud_service_runs_the_serve_config_on_a_ray_head() -> None:
    """The cloud command is the tested `ray start` + `serve run` entrypoint, with the Serve
    config the cluster test deploys, and its published port is the config's HTTP port."""
    cloud = compose()["services"]["cloud"]
    assert cloud["command"][:2] == ["sh", "deploy/cloud-entrypoint.sh"]
    script = (ROOT / "deploy" / "cloud-entrypoint.sh").read_text()
    assert "ray start --head" in script and "serve run" in script and "--non-blocking" in script
    assert "--include-dashboard=false" in script
    config_path = cloud["environment"]["SERVE_CONFIG"]
    serve_config = yaml.safe_load((ROOT / config_path).read_text())
    http_port = serve_config["http_options"]["port"]
    assert [host_port(p)[1] for p in cloud["ports"]] == [http_port]
    app = serve_config["applications"][0]
    assert app["import_path"] == "cloud_service.app:app_builder"
    args = app["args"]
    assert Path(args["bundles_dir"]).relative_to(APP_DIR).parts[:2] == ("models", "cloud")
    assert f"edgeroute model build-demo {APP_DIR}/models" in (ROOT / "Dockerfile").read_text()
    mounts = [v.split(":") for v in cloud["volumes"]]
    assert [m[1] for m in mounts] == [
        args["tokens_file"],
        cloud["environment"]["RAY_AUTH_TOKEN_PATH"],
    ]
    assert all(m[0].startswith("./secrets/") and m[2] == "ro" for m in mounts)
    assert cloud["environment"]["RAY_AUTH_MODE"] == "token"
    metrics_port = int(cloud["environment"]["RAY_METRICS_PORT"])
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = [
        t
        for job in prometheus["scrape_configs"]
        for s in job["static_configs"]
        for t in s["targets"]
    ]
    assert f"cloud:{metrics_port}" in targets


def test_edge_service_command_resolves_and_matches_ports_and_paths(demo_bundles_dir: Path) -> None:
    """The edge command parses with the real CLI; it reaches the cloud on the config's
    port, listens where Prometheus scrapes it, keeps data on a volume and mounts a valid
    policy read-only that takes its token from the environment."""
    from edge_node.lifecycle.active_policy import load_policy_file

    services = compose()["services"]
    edge = services["edge"]
    args = edge["command"]
    resolve_click(args)
    opts = {args[i]: args[i + 1] for i in range(3, len(args) - 1, 2)}
    serve_port = yaml.safe_load((ROOT / "cloud_service" / "serve_config.yaml").read_text())[
        "http_options"
    ]["port"]
    assert opts["--cloud-url"] == f"http://cloud:{serve_port}"
    assert [host_port(p)[1] for p in edge["ports"]] == [int(opts["--port"])]
    prometheus = (ROOT / "deploy" / "prometheus.yml").read_text()
    assert f"edge:{opts['--port']}" in prometheus
    volumes = dict(v.split(":", 1) for v in edge["volumes"])
    assert volumes["edge-data"] == opts["--data-dir"] and "edge-data" in compose()["volumes"]
    [policy_src] = [src for src, dst in volumes.items() if dst == f"{opts['--policy']}:ro"]
    policy_file = ROOT / policy_src
    env = {"EDGEROUTE_MODELS": str(demo_bundles_dir), "EDGEROUTE_CLOUD_TOKEN": "x"}
    assert edge["environment"]["EDGEROUTE_MODELS"] == f"{APP_DIR}/models"
    policy, _ = load_policy_file(policy_file, env)
    assert policy.cloud.token_env == "EDGEROUTE_CLOUD_TOKEN"
    assert services["prometheus"]["volumes"][0].startswith("./deploy/prometheus.yml:")


def test_entrypoint_uses_only_installed_tools() -> None:
    """`ray` and `serve` (used by the entrypoint) are installed next to this Python."""
    import sys

    script = (ROOT / "deploy" / "cloud-entrypoint.sh").read_text()
    tools = {m for m in re.findall(r"^\s*(?:until\s+)?(\w+)\s", script, re.M)} & {"ray", "serve"}
    assert tools == {"ray", "serve"}
    for tool in tools:
        assert (Path(sys.executable).parent / tool).exists(), tool
    assert shlex.split("sh deploy/cloud-entrypoint.sh")[1] == "deploy/cloud-entrypoint.sh"


def test_serve_configs_validate_with_serve_and_edgeroute_schemas() -> None:
    """serve_config.yaml and the RayService's serveConfigV2 parse as Serve deploy configs
    and their app args as CloudServiceSettings (so a typo fails here, not at deploy)."""
    from ray.serve.schema import ServeDeploySchema

    from cloud_service.settings import CloudServiceSettings

    rayservice = yaml.safe_load((ROOT / "deploy" / "kuberay" / "rayservice.yaml").read_text())
    configs = [
        yaml.safe_load((ROOT / "cloud_service" / "serve_config.yaml").read_text()),
        yaml.safe_load(rayservice["spec"]["serveConfigV2"]),
    ]
    for config in configs:
        schema = ServeDeploySchema.model_validate(config)
        [app] = schema.applications
        CloudServiceSettings.model_validate(app.args)
        [deployment] = app.deployments
        assert deployment.name == "CloudReranker"
        assert deployment.autoscaling_config["min_replicas"] >= 1  # type: ignore[index]


def _stages() -> dict[str, str]:
    """The Dockerfile's stages: {name: text}."""
    stages: dict[str, str] = {}
    name = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            name = line.split(" AS ")[-1].strip()
            stages[name] = ""
        elif name:
            stages[name] += line + "\n"
    return stages


def test_each_image_installs_only_its_profile_lock() -> None:
    """The compose services build the Dockerfile's `edge` and `cloud` targets; each
    installs its own hashed profile lock (no dev or tools lock), and only the throwaway
    `models` stage installs the tools."""
    stages = _stages()
    services = compose()["services"]
    for service in ("edge", "cloud"):
        assert services[service]["build"] == {"context": ".", "target": service}
        locks = re.findall(r"requirements/(\w+)\.lock", stages[service])
        assert set(locks) == {service}, locks
        assert "--require-hashes" in stages[service]
    assert set(re.findall(r"requirements/(\w+)\.lock", stages["models"])) == {"tools"}


def test_the_rayservice_inlines_the_serve_config_with_token_auth() -> None:
    """The KubeRay RayService's serveConfigV2 is serve_config.yaml (parsed equal), its Ray
    cluster has token authentication on, and it runs the cloud image."""
    rayservice = yaml.safe_load((ROOT / "deploy" / "kuberay" / "rayservice.yaml").read_text())
    serve_config = yaml.safe_load((ROOT / "cloud_service" / "serve_config.yaml").read_text())
    assert yaml.safe_load(rayservice["spec"]["serveConfigV2"]) == serve_config
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["authOptions"]["mode"] == "token" and cluster["authOptions"]["secretName"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"].startswith("edgeroute-cloud:")


def test_make_secrets_creates_matching_tokens_once(tmp_path: Path) -> None:
    """`make secrets` writes the tokens file (the compose edge's node id), edge.env with
    the same token and a Ray token, all mode 0600; a second run overwrites nothing."""
    import subprocess

    folder = tmp_path / "secrets"
    subprocess.run(["make", "-s", "secrets", f"SECRETS={folder}"], cwd=ROOT, check=True,
                   capture_output=True, timeout=60)  # fmt: skip
    node_id, token = (folder / "edgeroute-tokens").read_text().split()
    policy = yaml.safe_load((ROOT / "deploy" / "edge-policy.yaml").read_text())
    assert node_id == policy["node"]["id"] and len(token) >= 32
    assert (folder / "edge.env").read_text() == f"EDGEROUTE_CLOUD_TOKEN={token}\n"
    assert len((folder / "ray-token").read_text().strip()) == 64
    assert {f.stat().st_mode & 0o777 for f in folder.iterdir()} == {0o600}
    before = {f.name: f.read_text() for f in folder.iterdir()}
    out = subprocess.run(["make", "-s", "secrets", f"SECRETS={folder}"], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "wrote nothing" in out.stdout
    assert {f.name: f.read_text() for f in folder.iterdir()} == before
