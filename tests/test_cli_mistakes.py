"""A user's mistake at the command line gets one clear line, never a traceback: each
command with each kind of mistake (missing or unreadable files, bad paths, a taken port,
bad flags) exits 2 (1 where the command reports problems it found) naming the path,
field or flag."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeroute import processes
from edgeroute.bundle_tools import keygen
from edgeroute.cli import main


@pytest.fixture(scope="module")
def taken_port() -> Iterator[int]:
    """A port something listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


@pytest.fixture
def files(tmp_path: Path, demo_bundles_dir: Path) -> dict[str, Path]:
    """A valid policy, a text file that is not a model, a folder that is no bundle, and a
    key pair."""
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "version: 1\nqueue: {max_items: 10, max_bytes: 1048576, on_full: reject}\n"
        f"tasks:\n  digits: {{edge_bundle: {demo_bundles_dir / 'edge' / 'digits'}, "
        "threshold: 0.5}\n"
    )
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    key, pub, _ = keygen(tmp_path / "k")
    return {"policy": policy, "text": text, "empty": empty, "key": key, "pub": pub}


MISSING = "/nonexistent/edgeroute-test"
CASES: list[tuple[str, list[str], int, str]] = [
    ("policy file missing", ["edge", "serve", "--policy", "{missing}.yaml", "--data-dir",
                             "{tmp}/d", "--port", "{free}"], 2, "{missing}.yaml"),
    ("port taken", ["edge", "serve", "--policy", "{policy}", "--data-dir", "{tmp}/d",
                    "--port", "{taken}"], 2, "cannot listen on 127.0.0.1:{taken}"),
    ("port not a number", ["edge", "serve", "--policy", "{policy}", "--data-dir", "{tmp}/d",
                           "--port", "eighty"], 2, "'--port'"),
    ("unknown flag", ["edge", "serve", "--polcy", "{policy}"], 2, "--polcy"),
    ("policy to check missing", ["policy", "check", "{missing}.yaml"], 1, "{missing}.yaml"),
    ("log missing", ["policy", "simulate", "--policy", "{policy}", "--log", "{missing}"], 2,
     "{missing}"),
    ("policy to calibrate missing", ["policy", "calibrate", "--policy", "{missing}.yaml",
                                     "--log", "{tmp}", "--target-escalation", "0.2"], 2,
     "{missing}.yaml"),
    ("onnx file missing", ["model", "init", "{missing}.onnx", "{tmp}/b", "--task", "t"], 2,
     "{missing}.onnx"),
    ("not an onnx file", ["model", "init", "{text}", "{tmp}/b", "--task", "t"], 2,
     "onnxruntime cannot load the model"),
    ("bad range", ["model", "init", "{text}", "{tmp}/b", "--task", "t", "--range", "0-16"], 2,
     "expected LOW:HIGH"),
    ("no manifest to pack", ["model", "pack", "{empty}", "{tmp}/out", "--key", "{key}"], 2,
     "manifest.json"),
    ("bundle to verify missing", ["model", "verify", "{missing}", "--pubkey", "{pub}"], 1,
     "{missing}"),
    ("bundle to install missing", ["model", "install", "{missing}", "--data-dir", "{tmp}/d",
                                   "--policy", "{policy}"], 2, "{missing}"),
    ("labelled data missing", ["eval", "--data", "{missing}.csv", "--task", "digits",
                               "--policy", "{policy}", "--data-dir", "{tmp}/d", "--out",
                               "{tmp}/e"], 2, "{missing}.csv"),
    ("eval without a node", ["eval", "--data", "{text}", "--task", "digits", "--out",
                             "{tmp}/e"], 2, "--url, or --policy and --data-dir"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "argv", "code", "says"), CASES, ids=[c[0] for c in CASES])
def test_a_command_line_mistake_gets_one_line_and_an_exit_code(
    files: dict[str, Path],
    tmp_path: Path,
    taken_port: int,
    what: str,
    argv: list[str],
    code: int,
    says: str,
) -> None:
    """The command exits with its code, names the path, field or flag at fault, and prints
    no traceback (the CLI in process: an uncaught exception would show here)."""
    values = {
        "missing": MISSING,
        "tmp": str(tmp_path),
        "free": str(processes.free_port()),
        "taken": str(taken_port),
        **{k: str(v) for k, v in files.items()},
    }
    args = [a.format(**values) for a in argv]
    result = CliRunner().invoke(main, args)
    output = result.output + (result.stderr if result.stderr_bytes else "")
    assert result.exit_code == code, (what, result.exit_code, output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), output
    assert says.format(**values) in output, (what, output)
    assert "Traceback" not in output


def test_cloud_serve_refuses_a_missing_bundles_folder_before_starting_ray(tmp_path: Path) -> None:
    """`cloud serve --bundles /nonexistent` (a real process) exits 2 with the cause on one
    line and no traceback; in a fresh interpreter, `run_cloud` raises the same error with
    Ray never initialised."""
    argv = processes.edgeroute_cmd(
        "cloud", "serve", "--bundles", MISSING, "--port", str(processes.free_port())
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"{MISSING}: no such bundles folder" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    probe = (
        "import ray\n"
        "from pathlib import Path\n"
        "from cloud_service.server import run_cloud\n"
        "from cloud_service.settings import CloudServiceSettings\n"
        "from router.errors import BundleError\n"
        f"s = CloudServiceSettings(bundles_dir=Path({MISSING!r}), port=1)\n"
        "try:\n"
        "    run_cloud(s)\n"
        "except BundleError as exc:\n"
        "    print('refused', ray.is_initialized())\n"
    )
    checked = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert checked.stdout.strip() == "refused False", checked.stderr
