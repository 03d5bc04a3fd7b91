"""Parse policy YAML *text* into a `Policy`, reporting every problem at once with its line.

Pure: the caller reads the file and passes its text, the environment mapping used for
`${VAR}` / `${VAR:-default}` substitution, and optionally a `bundle_exists` predicate so
references to missing bundles are reported too. Raises `PolicyError` listing all issues.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Callable, Mapping
from typing import Any

import yaml
from pydantic import ValidationError

from router.errors import PolicyError, PolicyIssue
from router.policy import Policy, TaskPolicy
from router.policy_validation_issues import KeyPath, dotted, nearest_mark, validation_issues

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def policy_revision(text: str) -> str:
    """A short content hash identifying one revision of a policy file."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def resolve_bundle_path(policy_dir: str, bundle: str) -> str:
    """Where a task's `edge_bundle` points: absolute, or relative to the policy's folder."""
    return (
        bundle
        if posixpath.isabs(bundle)
        else posixpath.normpath(posixpath.join(policy_dir, bundle))
    )


def parse_policy(
    text: str,
    *,
    source: str = "<policy>",
    env: Mapping[str, str] | None = None,
    bundle_exists: Callable[[str], bool] | None = None,
    policy_dir: str = ".",
    label_count: Callable[[str], int | None] | None = None,
    check_token_env: bool = True,
) -> Policy:
    """Validate `text` as a policy; return the frozen `Policy` or raise `PolicyError`.

    Every issue carries file, line, column (where known), the dotted field path, what was
    wrong and what is allowed; misspelled keys get a "did you mean". Beyond the schema it
    reports thresholds that can never fire (see `_never_fires`), `${VAR}` references and a
    `cloud.token_env` naming variables unset in `env` (token_env only when `env` is given
    and `check_token_env`: offline tools that never call the cloud skip it),
    bundles `bundle_exists` says are missing, and uses `label_count(bundle_path)` (the
    number of labels of a bundle, None if unknown) for the max_prob chance-level check.
    Pure: it reads no files and no environment of its own.
    """
    issues: list[PolicyIssue] = []
    marks: dict[KeyPath, tuple[int, int]] = {}
    data = read_document(
        text, source, env, marks, issues, "a policy needs at least `queue` and `tasks`"
    )
    policy: Policy | None = None
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        issues.extend(validation_issues(exc, marks, source))
    issues.extend(
        _semantic_issues(
            _valid_tasks(data),
            data,
            marks,
            source,
            env if check_token_env else None,
            policy_dir,
            label_count,
        )
    )
    if bundle_exists is not None:
        for name, task in _valid_tasks(data).items():
            path = resolve_bundle_path(policy_dir, task.edge_bundle)
            if not bundle_exists(path):
                line, col = marks.get(("tasks", name, "edge_bundle"), (None, None))
                issues.append(
                    PolicyIssue(
                        f"tasks.{name}.edge_bundle",
                        f"no model bundle at {path!r} (a folder with manifest.json and model.onnx)",
                        source,
                        line,
                        col,
                    )
                )
    if issues:
        issues.sort(key=lambda i: (i.line or 0, i.column or 0))
        raise PolicyError(issues)
    assert policy is not None
    return policy


def read_document(
    text: str,
    source: str,
    env: Mapping[str, str] | None,
    marks: dict[KeyPath, tuple[int, int]],
    issues: list[PolicyIssue],
    needs: str,
) -> dict[Any, Any]:
    """The YAML mapping in `text` as Python values, `${VAR}` substituted from `env`, the
    line and column of every key recorded in `marks` and every problem found on the way
    appended to `issues`. Raises PolicyError at once when `text` is not YAML, is empty
    (the message ends with `needs`) or is not a mapping."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(
            [PolicyIssue("", f"not valid YAML: {problem}", source, line, col)]
        ) from None
    if root is None:
        raise PolicyError([PolicyIssue("", f"the file is empty; {needs}", source, 1, 1)])
    data = _to_python(root, (), marks, issues, env if env is not None else {}, source)
    if not isinstance(data, dict):
        raise PolicyError(
            [*issues, PolicyIssue("", "the top level must be a mapping of keys", source, 1, 1)]
        )
    return data


def _valid_tasks(data: dict[Any, Any]) -> dict[str, TaskPolicy]:
    """Every task whose own block validates, even if other parts of the file do not: so
    one file's problems (a bad threshold, a missing bundle) are reported all at once."""
    tasks = data.get("tasks")
    out: dict[str, TaskPolicy] = {}
    if isinstance(tasks, dict):
        for name, block in tasks.items():
            try:
                out[str(name)] = TaskPolicy.model_validate(block)
            except ValidationError:
                continue
    return out


def _semantic_issues(
    tasks: dict[str, TaskPolicy],
    data: dict[Any, Any],
    marks: dict[KeyPath, tuple[int, int]],
    source: str,
    env: Mapping[str, str] | None,
    policy_dir: str,
    label_count: Callable[[str], int | None] | None,
) -> list[PolicyIssue]:
    """Problems the schema alone cannot see: thresholds that never fire, unset token_env."""
    issues: list[PolicyIssue] = []

    def add(path: KeyPath, message: str) -> None:
        line, col = nearest_mark(path, marks)
        issues.append(PolicyIssue(dotted(path), message, source, line, col))

    for name, task in tasks.items():
        n = None
        if label_count is not None:
            n = label_count(resolve_bundle_path(policy_dir, task.edge_bundle))
        problem = _never_fires(task.score, task.threshold, task.placement, n)
        if problem is not None:
            add(("tasks", name, "threshold"), problem)
    cloud = data.get("cloud")
    token = cloud.get("token_env") if isinstance(cloud, dict) else None
    if env is not None and isinstance(token, str) and token and token not in env:
        add(
            ("cloud", "token_env"),
            f"environment variable {token} is referenced but not set "
            "(set it, or write token_env: null to send no token)",
        )
    return issues


def _never_fires(score: str, threshold: float, placement: str, labels: int | None) -> str | None:
    """Why a hybrid task's threshold can never escalate anything, or None if it can.

    A request escalates when score < threshold. Every score is >= 0, so threshold 0 never
    fires; max_prob is never below 1/labels (the top class has at least the average
    probability), so a max_prob threshold at or below 1/labels never fires either.
    """
    if placement != "hybrid":
        return None
    if threshold <= 0.0:
        return (
            f"threshold 0 never escalates: {score} is never below 0; allowed: a threshold in "
            "(0, 1], or placement: edge_only to keep every request on the device"
        )
    if score == "max_prob" and labels is not None and labels > 0 and threshold <= 1.0 / labels:
        return (
            f"threshold {threshold} never escalates: with {labels} labels max_prob is never "
            f"below 1/{labels} = {1.0 / labels:.4f}; allowed: a threshold in "
            f"({1.0 / labels:.4f}, 1]"
        )
    return None


def _to_python(
    node: yaml.Node,
    path: KeyPath,
    marks: dict[KeyPath, tuple[int, int]],
    issues: list[PolicyIssue],
    env: Mapping[str, str],
    source: str,
) -> Any:
    marks.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
            if not isinstance(key_node, yaml.ScalarNode):
                msg = "a key must be a plain name, not a list or mapping"
                issues.append(PolicyIssue(dotted(path), msg, source, line, col))
                continue
            key = _construct(key_node, path, issues, source)
            if key is None:
                continue
            sub = (*path, key)
            if key in out:
                first = marks.get(sub, (None, None))[0]
                issues.append(
                    PolicyIssue(
                        dotted(sub),
                        f"duplicate key {key!r} (first defined "
                        f"on line {first}); each key may appear once",
                        source,
                        line,
                        col,
                    )
                )
                continue
            marks[sub] = (line, col)
            out[key] = _to_python(value_node, sub, marks, issues, env, source)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _to_python(v, (*path, i), marks, issues, env, source) for i, v in enumerate(node.value)
        ]
    value = _construct(node, path, issues, source)
    if isinstance(value, str) and "${" in value:
        value = _substitute(value, path, marks, issues, env, source)
    return value


def _construct(node: yaml.Node, path: KeyPath, issues: list[PolicyIssue], source: str) -> Any:
    """A scalar node's value, or None with an issue when the safe loader cannot build it
    (a custom tag such as `!secret`)."""
    try:
        return yaml.SafeLoader("").construct_object(node)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        msg = f"cannot read this value: {problem} (custom YAML tags are not allowed)"
        mark = node.start_mark
        issues.append(PolicyIssue(dotted(path), msg, source, mark.line + 1, mark.column + 1))
        return None


def _substitute(
    value: str,
    path: KeyPath,
    marks: dict[KeyPath, tuple[int, int]],
    issues: list[PolicyIssue],
    env: Mapping[str, str],
    source: str,
) -> str:
    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        line, col = marks.get(path, (None, None))
        issues.append(
            PolicyIssue(
                dotted(path),
                f"environment variable {name} is referenced "
                "but not set (set it, or write ${" + name + ":-default})",
                source,
                line,
                col,
            )
        )
        return ""

    return _ENV_REF.sub(repl, value)


def policy_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a policy file, generated from `router.policy`.

    Deterministic for a given code version (committed as policies/schema.json)."""
    schema = Policy.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://edgeroute.invalid/policies/schema.json",
        **schema,
    }


def replace_task_threshold(text: str, task: str, threshold: float) -> str:
    """`text` with the value of `tasks.<task>.threshold` replaced by `threshold`, editing
    only that scalar so comments and layout are kept. Raises PolicyError if the file has
    no such key (or is not YAML)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise PolicyError([PolicyIssue("", f"not valid YAML: {exc}")]) from None
    node = _child(_child(_child(root, "tasks"), task), "threshold")
    if not isinstance(node, yaml.ScalarNode):
        raise PolicyError(
            [PolicyIssue(f"tasks.{task}.threshold", "no threshold to replace in this file")]
        )
    start, end = node.start_mark.index, node.end_mark.index
    return f"{text[:start]}{float(threshold)!r}{text[end:]}"


def _child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            found: yaml.Node = v
            return found
    return None
