"""`edgeroute policy check/schema/explain`, the committed JSON Schema, and the edge node
refusing to start on an invalid policy."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from edgeroute import processes
from edgeroute.cli_policy import policy, schema_text
from router.policy_loader import policy_schema

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
SCHEMA_LINE = "# yaml-language-server: $schema=./schema.json"

BROKEN = """\
version: 1
node:
  idd: n1
queue:
  max_items: -1
  max_bytes: 1048576
  on_full: reject
tasks:
  digits:
    edge_bundle: ./no-such-bundle
    threshold: 0
"""


def test_committed_schema_is_in_sync() -> None:
    """policies/schema.json equals the schema generated from the models (regenerate with
    `edgeroute policy schema > policies/schema.json`)."""
    committed = (POLICIES / "schema.json").read_text()
    assert committed == schema_text(policy_schema()), (
        "policies/schema.json is stale: run `edgeroute policy schema > policies/schema.json`"
    )


def test_schema_command_prints_the_schema() -> None:
    """`edgeroute policy schema` prints exactly the committed schema."""
    out = CliRunner().invoke(policy, ["schema"])
    assert out.exit_code == 0
    assert json.loads(out.output) == policy_schema()


@pytest.mark.parametrize("path", sorted(POLICIES.glob("*.yaml")), ids=lambda p: p.name)
def test_policy_files_reference_the_schema_and_validate_against_it(path: Path) -> None:
    """Each policy file starts with the yaml-language-server line and its data validates
    against the JSON Schema (what an editor does while ops type)."""
    text = path.read_text()
    assert text.splitlines()[0] == SCHEMA_LINE
    jsonschema.validate(yaml.safe_load(text), policy_schema())


def test_schema_rejects_a_misspelled_key() -> None:
    """The schema forbids unknown keys, so editors flag typos too."""
    data = yaml.safe_load((POLICIES / "default.yaml").read_text())
    data["tasks"]["digits"]["treshold"] = 0.5
    with pytest.raises(jsonschema.ValidationError, match="treshold"):
        jsonschema.validate(data, policy_schema())


def test_check_reports_every_problem_and_exits_1(tmp_path: Path, demo_bundles_dir: Path) -> None:
    """`policy check` prints all problems with file:line:col and exits 1; a good file exits 0."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(BROKEN)
    out = CliRunner().invoke(
        policy,
        ["check", str(bad), str(POLICIES / "default.yaml")],
        env={"EDGEROUTE_MODELS": str(demo_bundles_dir)},  # a clean clone has no models/
    )
    assert out.exit_code == 1
    text = out.output
    assert f"{bad}:3:3: node.idd: unknown key 'idd'; did you mean 'id'?" in text
    assert f"{bad}:5:3: queue.max_items:" in text
    assert f"{bad}:11:5: tasks.digits.threshold: threshold 0 never escalates" in text
    assert "no model bundle at" in text
    assert "default.yaml: ok" in text


def test_explain_fills_every_default(tmp_path: Path) -> None:
    """`policy explain --task` prints the effective task policy with defaults and budgets."""
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    good = BROKEN.replace("idd", "id").replace("-1", "10").replace("threshold: 0", "threshold: .4")
    path = tmp_path / "p.yaml"
    path.write_text(good.replace("./no-such-bundle", str(bundle)))
    out = CliRunner().invoke(policy, ["explain", str(path), "--task", "digits"])
    assert out.exit_code == 0, out.output
    data = yaml.safe_load(out.output)
    assert data["tasks"]["digits"]["placement"] == "hybrid"
    assert data["tasks"]["digits"]["top_k"] == 3
    assert data["cloud"]["retry"]["max_attempts"] == 3


def test_edge_serve_refuses_an_invalid_policy(tmp_path: Path) -> None:
    """`edgeroute edge serve` on an invalid policy exits 2 printing the same issues."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(BROKEN)
    proc = subprocess.run(
        processes.edgeroute_cmd(
            "edge", "serve", "--policy", str(bad), "--data-dir", str(tmp_path / "d"), "--port", "9"
        ),
        capture_output=True,
        timeout=60,
        check=False,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert f"{bad}:3:3: node.idd: unknown key 'idd'; did you mean 'id'?" in err
    assert "threshold 0 never escalates" in err
    assert not (tmp_path / "d").exists()  # nothing opened before validation
