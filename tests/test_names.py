"""Strict names: every name that becomes a path or a served value (task, version) is
checked with a full match and resolved inside its root; validation messages name the
field and the rule, never the value (issue 20, items 8-10)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_node.lifecycle.model_store import ModelStore
from edgeroute.cli import main
from router.errors import BundleError, InputError, PolicyError
from router.inputs import coerce_inputs
from router.manifest import InputSpec, parse_manifest
from router.model_updates import check_version_name
from router.policy_loader import parse_policy

BAD_NAMES = ["..", "a/../b", "digits/../../outside", "evil\n", "nul\x00", "x" * 200, "-x", ""]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_a_bad_version_is_refused(name: str) -> None:
    """A version with a path part, a trailing newline, NUL or too many characters cannot
    name a store folder."""
    with pytest.raises(BundleError) as info:
        check_version_name(name)
    assert info.value.code == "bad_version"


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_a_bad_task_name_is_refused_by_the_policy_and_the_store(name: str, tmp_path: Path) -> None:
    """The policy refuses the task name (naming the rule) and the model store never makes
    a folder for it."""
    text = (
        "version: 1\nqueue: {max_items: 10, max_bytes: 1048576, on_full: reject}\n"
        f"tasks:\n  {json.dumps(name)}: {{edge_bundle: /b, threshold: 0.5}}\n"
    )
    with pytest.raises(PolicyError) as info:
        parse_policy(text, bundle_exists=lambda _: True)
    assert "may only contain" in str(info.value)
    store = ModelStore(tmp_path / "models")
    with pytest.raises(BundleError):
        store.task_dir(name)
    assert not store.can_hold(name)


def test_a_manifest_version_with_a_newline_is_invalid() -> None:
    """`version: "evil\\n"` in a manifest is refused, so it is never served."""
    text = (
        '{"task": "digits", "version": "evil\\n", "role": "edge", "created_at": "x", '
        '"input": {"name": "input", "shape": [null, 4]}, "labels": ["a", "b"], '
        '"files": {"model.onnx": "0"}}'
    )
    with pytest.raises(BundleError) as info:
        parse_manifest(text, "m.json")
    assert info.value.field == "version"


def test_rollback_with_a_traversing_task_writes_nothing_outside(tmp_path: Path) -> None:
    """`model rollback --task 'digits/../../outside'` exits 2 with the rule and writes no
    file outside the data dir's models folder."""
    data = tmp_path / "data"
    result = CliRunner().invoke(
        main,
        ["model", "rollback", "--data-dir", str(data), "--task", "digits/../../outside",
         "--to", "@policy"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "cannot be used in the model store" in result.output
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == []


def test_range_errors_name_the_field_and_rule_not_the_value() -> None:
    """An out-of-range input is refused naming the field and the allowed range, without
    echoing the value sent."""
    spec = InputSpec(name="input", shape=[None, 2], min_value=0.0, max_value=16.0)
    with pytest.raises(InputError) as info:
        coerce_inputs([1.0, 17.77], spec)
    assert info.value.field == "inputs[1]"
    assert "[0.0, 16.0]" in info.value.message and "17.77" not in info.value.message
