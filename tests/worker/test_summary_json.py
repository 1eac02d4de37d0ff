"""The stored summary text is json.dumps(..., sort_keys=True, indent=2, ensure_ascii=False),
byte for byte: files written by earlier versions must compare equal and be skipped."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync_worker.summary_json import indented_json


def reference(value: Any) -> str:
    return json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False)


# What json.loads can hand back (NaN and infinities included: Garmin's parser accepts them).
parsed_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(parsed_json)
def test_indented_json_is_json_dumps_byte_for_byte(value: Any) -> None:
    assert indented_json(value) == reference(value)


@pytest.mark.parametrize(
    "value",
    [
        {},
        [],
        {"a": {}, "b": [], "c": [{}], "d": [[]]},
        {"name": 'Lauf 1 \u2013 Zürich "quoted" \\ \n\t\u2028 😀', "x": 1.0, "y": -0.0, "z": 1e300},
        {"activityId": 2**63 - 1, "hasPolyline": True, "description": None, "ok": False},
        {"activityType": {"typeId": 1, "typeKey": "running", "parentTypeId": 17}},
        {"nan": float("nan"), "inf": float("inf")},
        {1: "int keys", 2: "become strings"},
        {"tuple": (1, 2)},
        {"b": 1, "a": 2, "B": 3, "á": 4, "": 5},
    ],
)
def test_indented_json_matches_json_dumps_on_edge_cases(value: Any) -> None:
    assert indented_json(value) == reference(value)


def test_keys_json_cannot_sort_fail_as_in_json_dumps() -> None:
    with pytest.raises(TypeError):
        reference({1: "int key", "a": "str key"})
    with pytest.raises(TypeError):
        indented_json({1: "int key", "a": "str key"})


def nested(depth: int) -> Any:
    """Lists and objects nested `depth` deep, as json.loads hands back a summary whose laps
    nest that deep (it accepts almost 1000 levels)."""
    value: Any = [1.5, "x"]
    for level in range(depth - 1):
        value = {"laps": value, "n": level} if level % 2 else [value, None]
    return value


@pytest.mark.parametrize("depth", [400, 800])
def test_a_deeply_nested_summary_is_json_dumps_byte_for_byte(depth: int) -> None:
    """Before: RecursionError (this encoder takes about three frames per level)."""
    assert indented_json(nested(depth)) == reference(nested(depth))
