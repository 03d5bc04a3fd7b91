"""Request inputs are checked against the bundle's input spec before the model sees them."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

from router.errors import InputError
from router.inputs import coerce_inputs, coerce_many
from router.manifest import InputSpec

SPEC = InputSpec(name="input", shape=[None, 4], dtype="float32", min_value=0, max_value=16)


def test_flat_list_is_accepted() -> None:
    """A flat list of the right length becomes a float32 vector."""
    arr = coerce_inputs([0, 1.5, 2, 16], SPEC)
    assert arr.dtype.name == "float32" and arr.tolist() == [0, 1.5, 2, 16]


def test_named_nested_input_with_or_without_batch_axis() -> None:
    """{name: nested list} works with and without a leading batch axis of 1."""
    spec = InputSpec(name="img", shape=[None, 2, 2])
    assert coerce_inputs({"img": [[1, 2], [3, 4]]}, spec).tolist() == [1, 2, 3, 4]
    assert coerce_inputs({"img": [[[1, 2], [3, 4]]]}, spec).tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("raw", "field", "fragment"),
    [
        ([1, 2, 3], "inputs", "exactly 4 numbers; got 3"),
        ([1, 2, "x", 4], "inputs[2]", "must be a number; got str"),
        ([1, 2, True, 4], "inputs[2]", "must be a number; got bool"),
        ([1, 2, float("nan"), 4], "inputs[2]", "not a finite float32 number"),
        ([1, 2, 3, 17], "inputs[3]", "above the allowed range"),
        ([-1, 2, 3, 4], "inputs[0]", "below the allowed range"),
        ({"other": [1, 2, 3, 4]}, "inputs", "single key 'input'"),
        ({"input": [[1, 2], [3]]}, "inputs.input", "ragged"),
        ({"input": [1, 2, 3]}, "inputs.input", "expected [4]"),
        ("1,2,3,4", "inputs", "got str"),
    ],
)
def test_bad_inputs_name_the_field(raw: Any, field: str, fragment: str) -> None:
    """Each malformed input raises InputError naming the exact field and what is allowed."""
    with pytest.raises(InputError) as info:
        coerce_inputs(raw, SPEC)
    assert info.value.field == field
    assert fragment in info.value.message


def test_non_finite_allowed_by_spec() -> None:
    """allow_non_finite lets NaN through (the policy opted in)."""
    spec = InputSpec(name="input", shape=[None, 2], allow_non_finite=True)
    assert len(coerce_inputs([float("nan"), 1.0], spec)) == 2


@pytest.mark.parametrize(
    ("spec", "raw", "field"),
    [
        (SPEC, [1, float("inf"), 3, 4], "inputs[1]"),
        (SPEC, [1, 2, 3, float("-inf")], "inputs[3]"),
        (InputSpec(name="input", shape=[None, 2]), [1.0, float("nan")], "inputs[1]"),
        (InputSpec(name="input", shape=[None, 2], min_value=0), [float("nan"), 1.0], "inputs[0]"),
    ],
)
def test_fast_value_check_never_lets_a_bad_value_through(
    spec: InputSpec, raw: list[float], field: str
) -> None:
    """The one-pass value check still names the first non-finite value for every spec shape."""
    with pytest.raises(InputError) as info:
        coerce_inputs(raw, spec)
    assert info.value.field == field


def test_non_finite_allowed_inside_a_range_spec() -> None:
    """With limits and allow_non_finite, NaN passes and in-range numbers are kept."""
    spec = InputSpec(name="input", shape=[None, 2], min_value=0, max_value=1, allow_non_finite=True)
    out = coerce_inputs([float("nan"), 0.5], spec)
    assert out[1] == 0.5


def test_huge_finite_values_whose_sum_overflows_are_accepted() -> None:
    """Finite values whose float sum overflows take the exact path and are accepted."""
    spec = InputSpec(name="input", shape=[None, 3])
    big = 3.0e38
    assert coerce_inputs([big, big, big], spec).tolist() == pytest.approx([big, big, big])


_MIXED: list[Any] = [
    [1, 2, 3, 4],
    [1, 2, 3],
    [1, 2, "x", 4],
    [1, 2, True, 4],
    [1, 2, float("nan"), 4],
    [1, 2, 3, 17],
    [-1, 2, 3, 4],
    {"input": [[1, 2], [3, 4]]},
    {"other": [1, 2, 3, 4]},
    "1,2,3,4",
    [0.5, 16, 0, 2.25],
    [10**40, 1, 2, 3],
]


@pytest.mark.parametrize(
    "spec",
    [
        SPEC,
        InputSpec(name="input", shape=[None, 4]),
        InputSpec(name="input", shape=[None, 4], min_value=0),
        InputSpec(name="input", shape=[None, 4], allow_non_finite=True),
    ],
)
def test_coerce_many_gives_each_item_what_coerce_inputs_gives_it(spec: InputSpec) -> None:
    """Batch coercion returns, item by item, coerce_inputs' array or its exact error."""
    rows, errors = coerce_many(_MIXED, spec)
    assert rows.shape == (len(_MIXED), 4)
    assert rows.dtype == np.float32
    for raw, row, err in zip(_MIXED, rows, errors, strict=True):
        try:
            want = coerce_inputs(raw, spec)
        except InputError as exc:
            assert err is not None, raw
            assert (err.field, err.message) == (exc.field, exc.message)
        else:
            assert err is None, raw
            np.testing.assert_array_equal(row, want)


@pytest.mark.parametrize(
    ("raw", "field", "fragment"),
    [
        ([1e39, 1.0, 2.0, 3.0], "inputs[0]", "beyond 3.4e38"),
        ([1.0, 10**40, 2.0, 3.0], "inputs[1]", "beyond 3.4e38"),
        ([1.0, 2.0, 10**400, 3.0], "inputs[2]", "integer too large"),
        ({"x": [[1.0, 2.0, 3.0, 10**400]]}, "inputs.x", "integer too large"),
    ],
)
def test_values_beyond_float32_are_refused_without_warnings(
    raw: Any, field: str, fragment: str
) -> None:
    """Numbers too large for float32 (or any float) are InputErrors naming the field, in
    the single and batch paths alike, and numpy emits no overflow warning."""
    spec = InputSpec(name="x", shape=[None, 4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError) as single:
            coerce_inputs(raw, spec)
        _, errors = coerce_many([raw, [0.0, 1.0, 2.0, 3.0]], spec)
    assert single.value.field == field and fragment in str(single.value)
    assert errors[1] is None and errors[0] is not None
    assert (errors[0].field, str(errors[0])) == (single.value.field, str(single.value))
