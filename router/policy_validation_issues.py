"""Turn pydantic's `ValidationError` on a policy (or another document users write, such as
a rollout) into `PolicyIssue`s a person can act on.

Each error gets the file line and column of the key it is about (or of its nearest
enclosing key), the dotted field path, and a message naming what is allowed: unknown keys
get a "did you mean" or the place in the schema where that key belongs, missing keys the
field's description. Pure: it only reads the document's schema (`router.policy.Policy`
unless told) and the `marks` the loader collected while reading the YAML.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from router.errors import PolicyIssue
from router.policy import Policy

KeyPath = tuple[str | int, ...]
"""Where a value sits in the policy document: mapping keys and list indexes, outermost first."""


def dotted(path: KeyPath) -> str:
    """`path` as the dotted field name issues report (`tasks.digits.threshold`)."""
    return ".".join(str(p) for p in path)


def nearest_mark(
    loc: KeyPath, marks: dict[KeyPath, tuple[int, int]]
) -> tuple[int | None, int | None]:
    """The (line, column) of `loc`, or of its nearest enclosing path that has one; (None,
    None) when not even the document root is marked."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in marks:
            return marks[loc[:n]]
    return None, None


def validation_issues(
    exc: ValidationError,
    marks: dict[KeyPath, tuple[int, int]],
    source: str,
    root: type[BaseModel] = Policy,
) -> list[PolicyIssue]:
    """One `PolicyIssue` per error in `exc` (raised validating a `root` document), in
    pydantic's order, placed with `marks`."""
    issues = []
    for err in exc.errors():
        loc: KeyPath = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        line, col = nearest_mark(loc, marks)
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = _unknown_key_message(loc, root)
        elif kind == "missing":
            msg = f"required key {loc[-1]!r} is missing{_allowed_hint(loc, root)}"
        elif kind == "literal_error":
            msg = f"got {err.get('input')!r}; allowed: {err['ctx']['expected']}"
        else:
            msg = (
                f"{err['msg']} (got {err.get('input')!r})"
                if kind != "value_error"
                else err["msg"].removeprefix("Value error, ")
            )
        issues.append(PolicyIssue(dotted(loc), msg, source, line, col))
    return issues


def _model_at(loc: KeyPath, root: type[BaseModel]) -> type[BaseModel] | None:
    """The pydantic model whose keys live at `loc` (skipping dict keys such as task names
    and list indexes such as stage numbers)."""
    model: Any = root
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
        elif typing.get_origin(model) in (list, tuple):
            model = _unwrap(typing.get_args(model)[0])
            i += 1  # skip the list index
        i += 1
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    """`X` for an optional `X | None`; any other annotation unchanged."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _all_key_paths(root: type[BaseModel]) -> dict[str, list[str]]:
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

    visit(root, "")
    return found


def _unknown_key_message(loc: KeyPath, root: type[BaseModel]) -> str:
    """What to say about the unknown key at `loc`: where the key belongs in the schema if
    it is a key of another place, else the close match, else the keys allowed here."""
    key = str(loc[-1])
    model = _model_at(loc[:-1], root)
    allowed = sorted(model.model_fields) if model is not None else []
    msg = f"unknown key {key!r}"
    elsewhere = _all_key_paths(root).get(key)
    if elsewhere:
        return f"{msg} here; it belongs under {' or '.join(elsewhere)}"
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f"{msg}; did you mean {close[0]!r}?"
    return f"{msg}; allowed keys here: {', '.join(allowed)}" if allowed else msg


def _allowed_hint(loc: KeyPath, root: type[BaseModel]) -> str:
    """` (<field description>)` for the field at `loc`, or "" when it has none."""
    model = _model_at(loc[:-1], root)
    if model is None:
        return ""
    field = model.model_fields.get(str(loc[-1]))
    return f" ({field.description})" if field is not None and field.description else ""
