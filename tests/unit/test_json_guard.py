"""The bounded JSON decoder that everything from the API server goes through."""

from __future__ import annotations

import json
from contextlib import suppress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.adapters import json_guard
from controller.adapters.json_guard import MAX_DEPTH, TRUNCATED
from tests.unit.fakes import recursion_budget

SHAPES = ("objects", "lists", "both in turn")


def nested(levels: int, shape: str = "objects") -> str:
    """`levels` containers, one inside the other, as JSON text."""
    kinds = {"objects": [True], "lists": [False], "both in turn": [True, False]}[shape]
    objects = [kinds[i % len(kinds)] for i in range(levels)]
    opening = "".join('{"k":' if o else "[" for o in objects)
    return opening + '"leaf"' + "".join("}" if o else "]" for o in reversed(objects))


def depth_of(value: Any) -> tuple[int, Any]:
    """Levels of containers down the first branch, and the value at the bottom."""
    levels = 0
    while isinstance(value, dict | list) and value:
        value = next(iter(value.values())) if isinstance(value, dict) else value[0]
        levels += 1
    return levels, value


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 985, 10_000, 200_000])
def test_values_nested_deeper_than_the_bound_come_back_truncated(shape: str, levels: int) -> None:
    text = nested(levels, shape)
    if levels >= 10_000:
        with pytest.raises(RecursionError):
            json.loads(text)
    decoded = json_guard.loads(text)
    assert depth_of(decoded) == (MAX_DEPTH, TRUNCATED)


@pytest.mark.parametrize("shape", SHAPES)
def test_a_document_exactly_at_the_bound_decodes_whole(shape: str) -> None:
    text = nested(MAX_DEPTH, shape)
    assert not json_guard.too_deep(text.encode())
    assert json_guard.too_deep(nested(MAX_DEPTH + 1, shape).encode())
    assert json_guard.loads(text) == json.loads(text)


def test_decoding_needs_no_more_stack_than_the_bound_whatever_the_depth() -> None:
    text = '{"type":"ADDED","object":{"spec":{"payload":' + nested(10_000) + "}}}"
    with recursion_budget(MAX_DEPTH + 20):
        decoded = json_guard.loads(text)
    assert depth_of(decoded["object"]["spec"]["payload"]) == (MAX_DEPTH - 3, TRUNCATED)


def test_only_the_deep_branch_is_cut_and_its_siblings_survive() -> None:
    text = '{"metadata":{"name":"x"},"spec":{"a":' + nested(500, "lists") + ',"b":[1,{"c":"d"}]}}'
    decoded = json_guard.loads(text)
    assert decoded["metadata"] == {"name": "x"}
    assert decoded["spec"]["b"] == [1, {"c": "d"}]
    assert depth_of(decoded["spec"]["a"]) == (MAX_DEPTH - 2, TRUNCATED)


def test_brackets_inside_strings_and_escaped_quotes_are_not_nesting() -> None:
    strings = [json.dumps(s) for s in ("[" * 5_000, "{" * 300 + '"', "a\\", '\\"[[[', "\\")]
    strings.append('"\\u005b\\u007b' + "[" * 300 + '"')  # escaped brackets, then plain ones
    text = "[" + ",".join(strings) + "," + nested(MAX_DEPTH - 1, "lists") + "]"
    assert not json_guard.too_deep(text.encode())
    assert json_guard.loads(text) == json.loads(text)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 5_000,  # never closed
        '["' + "[" * 5_000,  # inside a string that never ends
        "[" * 5_000 + '"' + "]" * 5_000,
        "[" * 300 + "1" + "]" * 299,  # one closing bracket short
        "]" * 5_000 + "[" * 5_000,
    ],
)
def test_malformed_deep_text_is_a_decode_error_never_a_recursion_error(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        json_guard.loads(text)


def test_bytes_decode_as_json_loads_decodes_them() -> None:
    text = json.dumps({"s": "żółw ✓ \U0001f600", "n": [1, 2.5, None, True]}, ensure_ascii=False)
    for data in (text.encode(), text.encode("utf-16"), bytearray(text.encode())):
        assert json_guard.loads(data) == json.loads(text)
    deep = nested(1_000).encode()
    assert depth_of(json_guard.loads(deep)) == (MAX_DEPTH, TRUNCATED)


def test_text_holding_lone_surrogates_is_measured_and_decoded_as_json_does() -> None:
    text = '["\ud800",' + nested(MAX_DEPTH + 50, "lists") + "]"
    decoded = json_guard.loads(text)
    assert decoded[0] == "\ud800" and depth_of(decoded[1]) == (MAX_DEPTH - 1, TRUNCATED)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=60,
)


@given(value=json_values, padding=st.integers(0, MAX_DEPTH - 10))
def test_documents_within_the_bound_decode_exactly_as_json_does(value: Any, padding: int) -> None:
    text = "[" * padding + json.dumps(value) + "]" * padding
    assert json_guard.loads(text) == json.loads(text)


pieces = st.sampled_from(["[", "]", "{", "}", '"', "\\", ",", ":", "1", '"a"', '{"k":', "[" * 300, "]" * 300])


@given(text=st.lists(pieces, max_size=40).map("".join))
def test_any_text_decodes_or_fails_as_a_decode_error_within_the_stack_bound(text: str) -> None:
    with recursion_budget(MAX_DEPTH + 20), suppress(json.JSONDecodeError):
        json_guard.loads(text)
