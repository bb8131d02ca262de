from __future__ import annotations

from typing import Any

import pytest

from app.domain.fieldpath import compile_path, get_path

RECORD: dict[str, Any] = {
    "id": 7,
    "zero": 0,
    "empty": "",
    "_info": {"lastUpdated": "2024-01-01", "nested": {"deep": True}},
    "items": [{"id": "a"}, {"id": "b"}],
    "matrix": [[1, 2], [3, 4]],
    "text": "abc",
    "null": None,
    "3": "string key",
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("id", 7),
        ("zero", 0),
        ("empty", ""),
        ("_info.lastUpdated", "2024-01-01"),
        ("_info.nested.deep", True),
        ("items.0.id", "a"),
        ("items.1.id", "b"),
        ("items.-1.id", "b"),
        ("items[1].id", "b"),
        ("matrix[1][0]", 3),
        ("$.items.0.id", "a"),
        ("3", "string key"),
        (" id ", 7),
        # missing
        ("missing", None),
        ("_info.missing.deeper", None),
        ("items.2.id", None),
        ("items.x", None),
        ("text.0", None),
        ("id.value", None),
        ("null.value", None),
    ],
)
def test_get_path(path: str, expected: object) -> None:
    assert get_path(RECORD, path) == expected


@pytest.mark.parametrize("path", ["", "  ", "a..b", ".a", "a.", "$."])
def test_invalid_paths(path: str) -> None:
    with pytest.raises(ValueError, match="invalid field path"):
        compile_path(path)


def test_compiled_paths_are_cached_and_reusable() -> None:
    getter = compile_path("_info.lastUpdated")
    assert getter is compile_path("_info.lastUpdated")
    assert getter({"_info": {"lastUpdated": 1}}) == 1
    assert getter({"_info": "not a mapping"}) is None
    assert getter([]) is None
