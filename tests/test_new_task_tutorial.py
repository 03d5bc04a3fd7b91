"""docs/new-task.md, followed as written: its files written, its commands run through the
real CLI (a real Ray Serve cloud and a real edge node over 127.0.0.1, stopped by pid),
and the served labels checked against scikit-learn's own predictions."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edgeroute import processes
from tests.doc_blocks import Step, steps

PAGE = Path(__file__).resolve().parents[1] / "docs" / "new-task.md"
DOC_PORTS = ("8766", "8767")


def _ready_url(argv: list[str]) -> str:
    """Where a server started by the tutorial says it is ready."""
    port = argv[argv.index("--port") + 1]
    path = "/healthz" if argv[1:3] == ["cloud", "serve"] else "/readyz"
    return f"http://127.0.0.1:{port}{path}"


def _run(cmd: str, cwd: Path, env: dict[str, str]) -> str:
    """Run one foreground command of the page; its stdout (fails with its output)."""
    done = subprocess.run(
        cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{cmd!r} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_the_new_task_tutorial_serves_the_labels_scikit_learn_predicts(tmp_path: Path) -> None:
    """Every step of docs/new-task.md succeeds in order; the eval report covers every test
    row; the tuned policy passes `policy check`; the served answer's string label is what
    scikit-learn's edge or cloud model (by the answer's route) predicts for that row."""
    ports = {doc: str(processes.free_port()) for doc in DOC_PORTS}
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    cwd = tmp_path
    servers: list[subprocess.Popen[bytes]] = []
    answers: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        for step in steps(PAGE):
            text = step.text
            for doc, real in ports.items():
                text = text.replace(doc, real)
            if step.kind == "file":
                (cwd / step.name).write_text(text, encoding="utf-8")
            elif text.startswith("mkdir -p ") and "&& cd " in text:
                cwd = cwd / text.split("&& cd ")[1].strip()
                cwd.mkdir(parents=True, exist_ok=True)
            elif text.endswith("&"):
                argv = shlex.split(text[:-1])
                assert argv[0] == "edgeroute", text
                log = tmp_path / f"server-{len(servers)}.log"
                proc = processes.start(processes.edgeroute_cmd(*argv[1:]), log, env, cwd=cwd)
                servers.append(proc)
                processes.wait_http(_ready_url(argv), proc, timeout_s=240, log_path=log)
            else:
                out = _run(text, cwd, env)
                if text.startswith("curl "):
                    answers.append(json.loads(out))
        elapsed = time.monotonic() - started
    finally:
        for proc in reversed(servers):
            processes.stop(proc, timeout_s=60)
    print(f"tutorial wall time: {elapsed:.1f} s")
    report = json.loads((cwd / "wine-eval" / "report.json").read_text())
    test_rows = len((cwd / "wine-test.csv").read_text().splitlines()) - 1
    assert report["rows"] == test_rows and report["refused"] == 0, report
    assert report["final_accuracy"] is not None and report["final_accuracy"] > 0.8, report
    assert report["edge_accuracy"] is not None, report
    labels = json.loads((cwd / "wine-eval" / "labels.json").read_text())
    assert len(labels) == test_rows
    assert answers, "the tutorial sends one request"
    _check_against_sklearn(cwd, answers[0], env)


def _check_against_sklearn(cwd: Path, answer: dict[str, Any], env: dict[str, str]) -> None:
    """The answer's label is the prediction of the scikit-learn model that answered it
    (the page's own training code, run again in a fresh folder)."""
    again = cwd.parent / "retrain"
    again.mkdir()
    (again / "train.py").write_text((cwd / "train.py").read_text())
    row = [13.2, 1.78, 2.14, 11.2, 100, 2.65, 2.76, 0.26, 1.28, 4.38, 1.05, 3.4, 1050]
    probe = (
        "exec(open('train.py').read())\n"
        "import json\n"
        f"x = np.asarray([{row}], dtype=np.float32)\n"
        "print(json.dumps({'edge': str(edge.predict(x)[0]), 'cloud': str(cloud.predict(x)[0])}))"
    )
    predicted = json.loads(_run(f"python -c {shlex.quote(probe)}", again, env))
    assert answer["label"] == predicted[answer["route"]], (answer, predicted)


def test_doc_blocks_reads_files_and_commands(tmp_path: Path) -> None:
    """The page reader returns named files and one step per shell command, continuation
    lines joined and comments dropped, in reading order."""
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n<!-- file: a.txt -->\n```\nhello\n```\n\n```sh\necho 1  # one\n"
        "edgeroute x \\\n    --y 2\n# note\n```\n\n```python\nprint()\n```\n"
    )
    assert steps(page) == [
        Step("file", "hello\n", "a.txt"),
        Step("sh", "echo 1"),
        Step("sh", "edgeroute x      --y 2"),
    ]
