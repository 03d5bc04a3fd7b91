"""Checking a request's `inputs` against a bundle's input spec, before the model sees them.

Pure (numpy only). Accepts the two shapes the edge API allows: a flat list of numbers
(row-major), or `{input_name: nested list}` matching the model's input shape with or
without the batch axis. Every fault raises `InputError` naming the field and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from router.errors import InputError
from router.manifest import InputSpec

_NUMERIC = (int, float)
_FAST_TYPES = frozenset({int, float})  # exact types: bool and subclasses take the slow path


def coerce_inputs(raw: Any, spec: InputSpec, *, field: str = "inputs") -> np.ndarray:
    """Return the item as a 1-D float32 array of `spec.item_size` numbers, or raise InputError.

    Checks: structure, element types (numbers only; booleans and strings are rejected),
    size, finiteness (unless `spec.allow_non_finite`), and the [min_value, max_value] range.
    """
    size = spec.item_size
    if isinstance(raw, dict):
        if set(raw) != {spec.name}:
            raise InputError(
                f"{field} must be a list of {size} numbers or an object with the "
                f"single key {spec.name!r}; got keys {sorted(map(str, raw))}",
                field=field,
            )
        field = f"{field}.{spec.name}"
        arr = _nested_array(raw[spec.name], spec, field)
    elif isinstance(raw, list):
        arr = _flat_array(raw, size, field)
    else:
        raise InputError(
            f"{field} must be a list of {size} numbers or {{{spec.name!r}: nested "
            f"list of shape {_shape_str(spec)}}}; got {type(raw).__name__}",
            field=field,
        )
    if _surely_valid(arr, spec):
        return arr
    _check_values(arr, spec, field)
    return arr


def coerce_many(raws: Sequence[Any], spec: InputSpec) -> tuple[np.ndarray, list[InputError | None]]:
    """`coerce_inputs` for several items of one task at once: a float32 array [N, item_size]
    (the row of a refused item is zeros) and, per item, None or the InputError that
    `coerce_inputs` raises for it alone (same message and field).

    Flat lists of plain numbers of the right length (the common case) are converted in one
    C-level pass and range-checked row by row with vectorised reductions; every other item,
    and every row those checks do not clear, goes through `coerce_inputs` itself, so the
    outcome of each item equals `coerce_inputs`'s. Pure.
    """
    size = spec.item_size
    if len(raws) == 1:  # a single request: no batch bookkeeping
        try:
            return coerce_inputs(raws[0], spec).reshape(1, size), [None]
        except InputError as exc:
            return np.zeros((1, size), dtype=np.float32), [exc]
    out = np.zeros((len(raws), size), dtype=np.float32)
    errors: list[InputError | None] = [None] * len(raws)
    fast = [
        i
        for i, raw in enumerate(raws)
        if type(raw) is list and len(raw) == size and set(map(type, raw)) <= _FAST_TYPES
    ]
    cleared = np.zeros(len(raws), dtype=bool)
    if fast and size:
        try:
            with np.errstate(over="ignore"):  # beyond float32: inf, refused by the checks
                rows = np.asarray([raws[i] for i in fast], dtype=np.float32)
        except (OverflowError, ValueError):  # an int too big for a float: per item
            rows = None
        if rows is not None:
            out[fast] = rows
            cleared[fast] = _rows_surely_valid(rows, spec)
    for i, raw in enumerate(raws):
        if not cleared[i]:
            try:
                out[i] = coerce_inputs(raw, spec)
            except InputError as exc:
                errors[i] = exc
    return out, errors


def _rows_surely_valid(rows: np.ndarray, spec: InputSpec) -> np.ndarray:
    """`_surely_valid` of each row of `rows` [N, size], vectorised (False: check it alone)."""
    lo, hi = spec.min_value, spec.max_value
    if lo is not None and hi is not None:
        # NaN propagates through min/max and fails both comparisons.
        with np.errstate(invalid="ignore"):
            ok: np.ndarray = (lo <= rows.min(axis=1)) & (rows.max(axis=1) <= hi)
        return ok
    if lo is not None or hi is not None:
        return np.zeros(rows.shape[0], dtype=bool)
    if spec.allow_non_finite:
        return np.ones(rows.shape[0], dtype=bool)
    finite: np.ndarray = np.isfinite(rows).all(axis=1)
    return finite


def _surely_valid(arr: np.ndarray, spec: InputSpec) -> bool:
    """A fast sufficient test (two or one C-level passes) that every value is finite where
    required and inside the spec's range; False means "check each value" (exact)."""
    lo, hi = spec.min_value, spec.max_value
    if arr.size == 0:
        return True
    if lo is not None and hi is not None:
        # NaN propagates through minimum/maximum and fails both comparisons.
        return bool(lo <= np.minimum.reduce(arr) and np.maximum.reduce(arr) <= hi)
    if lo is not None or hi is not None:
        return False
    # A finite sum means every value is finite (an overflowing sum only costs the slow path).
    return spec.allow_non_finite or math.isfinite(np.add.reduce(arr, dtype=np.float64))


def _check_values(arr: np.ndarray, spec: InputSpec, field: str) -> None:
    """Raise InputError for the first value that is non-finite (unless allowed) or out of
    the spec's range."""
    if not spec.allow_non_finite and not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise InputError(
                f"{field}[{int(bad[0])}] is not a finite float32 number (NaN, Infinity "
                "and magnitudes beyond 3.4e38 are not allowed for this task)",
                field=f"{field}[{int(bad[0])}]",
            )
    for limit, cmp, word in (
        (spec.min_value, np.less, "below"),
        (spec.max_value, np.greater, "above"),
    ):
        if limit is not None and cmp(arr, limit).any():
            out = np.flatnonzero(cmp(arr, limit))
            if out.size:
                i = int(out[0])
                raise InputError(
                    f"{field}[{i}] is {word} the allowed range "
                    f"[{spec.min_value}, {spec.max_value}]",
                    field=f"{field}[{i}]",
                )


def _flat_array(raw: list[Any], size: int, field: str) -> np.ndarray:
    if len(raw) != size:
        raise InputError(f"{field} must have exactly {size} numbers; got {len(raw)}", field=field)
    if not set(map(type, raw)) <= _FAST_TYPES:  # else the common case: one C-level pass
        for i, v in enumerate(raw):
            if not isinstance(v, _NUMERIC) or isinstance(v, bool):
                raise InputError(
                    f"{field}[{i}] must be a number; got {type(v).__name__}", field=f"{field}[{i}]"
                )
    return _as_float32(raw, field)


def _beyond_float(v: int) -> bool:
    try:
        float(v)
    except OverflowError:
        return True
    return False


def _as_float32(value: Any, field: str) -> np.ndarray:
    """`value` (numbers, possibly nested) as float32; magnitudes beyond float32 become
    +-inf (refused later unless non-finite values are allowed); an int too large for any
    float raises InputError naming it."""
    try:
        with np.errstate(over="ignore"):
            return np.asarray(value, dtype=np.float32)
    except OverflowError:
        if isinstance(value, list):  # a flat list: name the item
            bad = [i for i, v in enumerate(value) if isinstance(v, int) and _beyond_float(v)]
            field = f"{field}[{bad[0]}]" if bad else field
        raise InputError(
            f"{field} holds an integer too large to be a number for the model "
            "(the largest allowed magnitude is about 3.4e38)",
            field=field,
        ) from None


def _nested_array(value: Any, spec: InputSpec, field: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except OverflowError:
        arr = _as_float32(value, field)  # raises: an int beyond float64
    except (ValueError, TypeError):
        raise InputError(
            f"{field} must be a nested list of numbers of shape {_shape_str(spec)} "
            "(ragged lists and non-numbers are not allowed)",
            field=field,
        ) from None
    if _has_non_numbers(value):
        raise InputError(f"{field} must contain only numbers", field=field)
    want = tuple(d for d in spec.shape[1:])
    got = arr.shape
    if got and got[0] == 1 and got[1:] == want:
        got = got[1:]
    if got != want:
        raise InputError(
            f"{field} has shape {list(arr.shape)}; expected {_shape_str(spec)}", field=field
        )
    with np.errstate(over="ignore"):  # beyond float32: inf, refused by the checks
        return arr.astype(np.float32).reshape(-1)


def _has_non_numbers(value: Any) -> bool:
    if isinstance(value, list):
        return any(_has_non_numbers(v) for v in value)
    return isinstance(value, bool) or not isinstance(value, _NUMERIC)


def _shape_str(spec: InputSpec) -> str:
    return str([d for d in spec.shape[1:]])
