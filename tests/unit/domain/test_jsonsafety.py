"""Tenant JSON: every input that PostgreSQL or Python cannot take is an error naming its place."""

from __future__ import annotations

import pytest

from app.domain.jsonsafety import UnsafeJson, check_value, loads_checked
from app.domain.limits import MAX_JSON_DEPTH


@pytest.mark.parametrize(
    ("raw", "field", "fragment"),
    [
        ('{"name": "a\\u0000b"}', "name", "NUL"),
        ('{"tags": ["ok", "\\ud800"]}', "tags[1]", "surrogate"),
        ('{"configuration": {"x": {"y": "\\udfff"}}}', "configuration.x.y", "surrogate"),
        ('{"a\\u0000": 1}', "<key>", "NUL"),
        ("[" * 100_000 + "]" * 100_000, "body", "nested"),
        ('{"c": ' + "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1) + "}", "c", "nested"),
        ('{"a": ', "body", "not valid JSON"),
    ],
)
def test_refused_with_the_field_named(raw: str, field: str, fragment: str) -> None:
    with pytest.raises(UnsafeJson) as info:
        loads_checked(raw)
    assert info.value.field == field
    assert fragment in info.value.message


def test_undecodable_bytes() -> None:
    with pytest.raises(UnsafeJson, match="UTF-8"):
        loads_checked(b'{"a": "\xff"}')


def test_ordinary_json_passes_unchanged() -> None:
    raw = '{"name": "Zoë ✓", "n": [1, 2.5, null, true], "deep": ' + "[" * 10 + "]" * 10 + "}"
    assert loads_checked(raw.encode())["name"] == "Zoë ✓"


def test_check_value_names_the_root() -> None:
    with pytest.raises(UnsafeJson) as info:
        check_value({"contacts": {"url": "/c\x00"}}, root="event.poller.configuration")
    assert info.value.field == "event.poller.configuration.contacts.url"


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    deep_looking = '{"a": "' + "[" * 100 + '\\"]]"}'
    assert loads_checked(deep_looking)["a"].startswith("[[")


def test_an_escaped_backslash_before_u0000_is_text_not_nul() -> None:
    assert loads_checked('{"a": "\\\\u0000"}')["a"] == "\\u0000"


def test_a_valid_surrogate_pair_passes() -> None:
    assert loads_checked('{"a": "\\ud83d\\ude00"}')["a"] == "\U0001f600"


def test_depth_at_the_bound_passes_and_one_more_does_not() -> None:
    at_bound = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert loads_checked(at_bound) is not None
    with pytest.raises(UnsafeJson, match="nested"):
        loads_checked("[" + at_bound + "]")
