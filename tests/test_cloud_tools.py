"""The cluster tools without a cluster: `edgeroute cloud config` and `cloud stop` errors,
which processes `cloud stop` selects (only the cluster's: not a bystander naming a path
under its temp dir, not its own wrapper), the offline docs page's escaping, and
`make secrets` rebuilding a lost edge.env."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_node.http.docs_page import render
from edgeroute.cli import main
from edgeroute.compose_secrets import create
from edgeroute.ray_cluster import cluster_pids
from edgeroute.serve_config import local_config
from router.errors import InputError
from tests.waiting import wait_until


def test_local_config_names_the_missing_path(tmp_path: Path) -> None:
    """A bundles folder or tokens file that does not exist is an InputError naming the
    option; with both present the config holds their absolute paths and the address."""
    with pytest.raises(InputError, match="--bundles") as err:
        local_config(tmp_path / "nope", None, "127.0.0.1", 8000)
    assert err.value.field == "--bundles"
    with pytest.raises(InputError, match="--tokens-file"):
        local_config(tmp_path, tmp_path / "tokens", "127.0.0.1", 8000)
    (tmp_path / "tokens").write_text("n t\n")
    config = local_config(tmp_path, tmp_path / "tokens", "127.0.0.1", 9000)
    args = config["applications"][0]["args"]
    assert args["bundles_dir"] == str(tmp_path.resolve())
    assert args["tokens_file"] == str((tmp_path / "tokens").resolve())
    assert config["http_options"] == {"host": "127.0.0.1", "port": 9000}


def test_cloud_config_and_stop_fail_with_a_message_not_a_traceback(tmp_path: Path) -> None:
    """An unwritable --out and a missing --temp-dir exit 2 naming the option; a temp dir
    with no cluster running says there is nothing to stop and exits 0."""
    runner = CliRunner()
    out = tmp_path / "no-such-dir" / "serve.yaml"
    result = runner.invoke(main, ["cloud", "config", "--bundles", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 2 and "--out" in result.output and "Traceback" not in result.output
    result = runner.invoke(main, ["cloud", "stop", "--temp-dir", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "--temp-dir" in result.output
    result = runner.invoke(main, ["cloud", "stop", "--temp-dir", str(tmp_path)])
    assert result.exit_code == 0 and "nothing to stop" in result.output


def test_cloud_stop_ends_the_clusters_processes_only(tmp_path: Path) -> None:
    """A process started with `--temp-dir=DIR` and its child are stopped; a bystander whose
    argument is a path under DIR survives, and so does the `timeout` wrapper that runs the
    stop command with `--temp-dir=DIR` on its own command line."""
    temp = tmp_path / "ray"
    temp.mkdir()
    idle = "import signal; signal.pause()"  # runs until a signal ends it
    child_code = (
        f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {idle!r}]); {idle}"
    )
    member = subprocess.Popen([sys.executable, "-c", child_code, f"--temp-dir={temp}"])
    bystander = subprocess.Popen([sys.executable, "-c", idle, str(temp / "session" / "x")])
    try:
        wait_until(lambda: len(cluster_pids(temp)) == 2, 10, 0.05, "the member and its child")
        assert bystander.pid not in cluster_pids(temp)
        stop = subprocess.run(
            ["timeout", "60", sys.executable, "-m", "edgeroute.cli", "cloud", "stop",
             f"--temp-dir={temp}", "--grace", "5"],
            capture_output=True, text=True, timeout=90,
        )  # fmt: skip
        assert stop.returncode == 0, stop.stderr
        assert "stopped 2 processes" in stop.stdout
        assert member.wait(timeout=10) != 0 and not cluster_pids(temp)
        assert bystander.poll() is None
    finally:
        for proc in (member, bystander):
            proc.kill()
            proc.wait()


def test_the_docs_page_escapes_what_the_schema_says() -> None:
    """Markup in a schema's title, description or path comes out escaped, never as HTML."""
    schema = {
        "info": {"title": "<b>api</b>"},
        "paths": {"/v1/<x>": {"get": {"description": "<script>alert(1)</script>",
                                      "responses": {"200": {"description": "ok"}}}}},
    }  # fmt: skip
    page = render(schema)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<code>/v1/&lt;x&gt;</code>" in page and "&lt;b&gt;api&lt;/b&gt;" in page


def test_secrets_rebuild_a_lost_edge_env_from_the_tokens_file(tmp_path: Path) -> None:
    """With the tokens file kept and edge.env deleted, a second run writes edge.env with
    the node's token from the tokens file and nothing else."""
    assert create(tmp_path, "edge-1") == ["edgeroute-tokens", "edge.env", "ray-token"]
    token = (tmp_path / "edgeroute-tokens").read_text().split()[1]
    (tmp_path / "edge.env").unlink()
    assert create(tmp_path, "edge-1") == ["edge.env"]
    assert (tmp_path / "edge.env").read_text() == f"EDGEROUTE_CLOUD_TOKEN={token}\n"
