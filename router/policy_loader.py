"""Parse policy YAML *text* into a `Policy`, reporting every problem at once with its line.

Pure: the caller reads the file and passes its text, the environment mapping used for
`${VAR}` / `${VAR:-default}` substitution, and optionally a `bundle_exists` predicate so
references to missing bundles are reported too. Raises `PolicyError` listing all issues.
"""

from __future__ import annotations

import difflib
import hashlib
import posixpath
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from router.errors import PolicyError, PolicyIssue
from router.policy import Policy

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
Path = tuple[str | int, ...]


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
) -> Policy:
    """Validate `text` as a policy; return the frozen `Policy` or raise `PolicyError`.

    Every issue carries file, line, column (where known), the dotted field path, what was
    wrong and what is allowed; misspelled keys get a "did you mean".
    """
    issues: list[PolicyIssue] = []
    marks: dict[Path, tuple[int, int]] = {}
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
        raise PolicyError(
            [
                PolicyIssue(
                    "",
                    "the file is empty; a policy needs at least `queue` and `tasks`",
                    source,
                    1,
                    1,
                )
            ]
        )
    data = _to_python(root, (), marks, issues, env if env is not None else {}, source)
    if not isinstance(data, dict):
        raise PolicyError(
            [PolicyIssue("", "the top level must be a mapping of keys", source, 1, 1)]
        )
    policy: Policy | None = None
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        issues.extend(_map_validation_error(exc, marks, source))
    if policy is not None and bundle_exists is not None:
        for name, task in policy.tasks.items():
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


def _to_python(
    node: yaml.Node,
    path: Path,
    marks: dict[Path, tuple[int, int]],
    issues: list[PolicyIssue],
    env: Mapping[str, str],
    source: str,
) -> Any:
    marks.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.SafeLoader("").construct_object(key_node)
            sub = (*path, key)
            line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
            if key in out:
                first = marks.get(sub, (None, None))[0]
                issues.append(
                    PolicyIssue(
                        _dotted(sub),
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
    value = yaml.SafeLoader("").construct_object(node)
    if isinstance(value, str) and "${" in value:
        value = _substitute(value, path, marks, issues, env, source)
    return value


def _substitute(
    value: str,
    path: Path,
    marks: dict[Path, tuple[int, int]],
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
                _dotted(path),
                f"environment variable {name} is referenced "
                "but not set (set it, or write ${" + name + ":-default})",
                source,
                line,
                col,
            )
        )
        return ""

    return _ENV_REF.sub(repl, value)


def _dotted(path: Path) -> str:
    return ".".join(str(p) for p in path)


def _map_validation_error(
    exc: ValidationError, marks: dict[Path, tuple[int, int]], source: str
) -> list[PolicyIssue]:
    issues = []
    for err in exc.errors():
        loc: Path = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        line, col = _nearest_mark(loc, marks)
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = _unknown_key_message(loc)
        elif kind == "missing":
            msg = f"required key {loc[-1]!r} is missing{_allowed_hint(loc)}"
        elif kind == "literal_error":
            msg = f"got {err.get('input')!r}; allowed: {err['ctx']['expected']}"
        else:
            msg = (
                f"{err['msg']} (got {err.get('input')!r})"
                if kind != "value_error"
                else err["msg"].removeprefix("Value error, ")
            )
        issues.append(PolicyIssue(_dotted(loc), msg, source, line, col))
    return issues


def _nearest_mark(loc: Path, marks: dict[Path, tuple[int, int]]) -> tuple[int | None, int | None]:
    for n in range(len(loc), -1, -1):
        if loc[:n] in marks:
            return marks[loc[:n]]
    return None, None


def _model_at(loc: Path) -> type[BaseModel] | None:
    """The pydantic model whose keys live at `loc` (skipping dict keys such as task names)."""
    model: Any = Policy
    i = 0
    while i < len(loc):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(str(loc[i]))
        if field is None:
            return None
        model = _unwrap(field.annotation)
        if typing.get_origin(model) is dict:
            model = _unwrap(typing.get_args(model)[1])
            i += 1  # skip the dict key
        i += 1
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _all_key_paths() -> dict[str, list[str]]:
    """Every key name in the schema -> the dotted places where it is allowed."""
    found: dict[str, list[str]] = {}

    def visit(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            found.setdefault(name, []).append(f"{prefix}{name}")
            tp = _unwrap(field.annotation)
            if typing.get_origin(tp) is dict:
                tp = _unwrap(typing.get_args(tp)[1])
                if isinstance(tp, type) and issubclass(tp, BaseModel):
                    visit(tp, f"{prefix}{name}.<name>.")
            elif isinstance(tp, type) and issubclass(tp, BaseModel):
                visit(tp, f"{prefix}{name}.")

    visit(Policy, "")
    return found


def _unknown_key_message(loc: Path) -> str:
    key = str(loc[-1])
    model = _model_at(loc[:-1])
    allowed = sorted(model.model_fields) if model is not None else []
    msg = f"unknown key {key!r}"
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f"{msg}; did you mean {close[0]!r}?"
    elsewhere = _all_key_paths().get(key)
    if elsewhere:
        return f"{msg} here; it belongs under {' or '.join(elsewhere)}"
    return f"{msg}; allowed keys here: {', '.join(allowed)}" if allowed else msg


def _allowed_hint(loc: Path) -> str:
    model = _model_at(loc[:-1])
    if model is None:
        return ""
    field = model.model_fields.get(str(loc[-1]))
    return f" ({field.description})" if field is not None and field.description else ""
