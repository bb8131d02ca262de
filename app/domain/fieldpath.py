"""Dotted field paths into provider records (``idField``, ``updatedDateField``...).

Open Connectors calls these "JSON paths" and its examples use dots (``_info.lastUpdated``,
``user.id``). We accept ``a.b.c``, list indexes as segments (``items.0.id``) or in brackets
(``items[0].id``) and an optional leading ``$.``. A path is compiled once into a chain of
lookups because it is evaluated for every record of every poll.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from app.domain.limits import MAX_FIELD_PATH_LENGTH

__all__ = ["compile_path", "get_path"]

Getter = Callable[[Any], Any]

_BRACKET_INDEX_RE = re.compile(r"\[(-?\d+)\]")


def _segment_getter(segment: str) -> Getter:
    # ASCII only: str.isdigit() is also true for '²', which int() refuses.
    digits = segment.removeprefix("-")
    index = int(segment) if digits.isascii() and digits.isdigit() else None

    def get(node: Any) -> Any:
        if isinstance(node, Mapping):
            return node.get(segment)
        if index is not None and isinstance(node, Sequence) and not isinstance(node, str | bytes):
            return node[index] if -len(node) <= index < len(node) else None
        return None

    return get


@functools.lru_cache(maxsize=1024)
def compile_path(path: str) -> Getter:
    """Compile ``path`` into a function ``record -> value`` (``None`` when anything is missing).

    Raises :class:`ValueError` for an empty path or an empty segment (``a..b``), so that a
    configuration mistake is reported when the configuration is saved, not at poll time,
    and for a path longer than ``MAX_FIELD_PATH_LENGTH``.
    """
    if len(path) > MAX_FIELD_PATH_LENGTH:
        raise ValueError(f"a field path must be at most {MAX_FIELD_PATH_LENGTH} characters")
    normalized = _BRACKET_INDEX_RE.sub(r".\1", path.strip())
    normalized = normalized.removeprefix("$.")
    segments = normalized.split(".")
    if not normalized or any(not segment for segment in segments):
        raise ValueError(f"invalid field path {path!r}")
    if len(segments) == 1:
        # The common case (``id``, ``last_updated``) without the loop below.
        return _segment_getter(segments[0])
    getters = tuple(_segment_getter(segment) for segment in segments)

    def get(record: Any) -> Any:
        node = record
        for getter in getters:
            node = getter(node)
            if node is None:
                return None
        return node

    return get


def get_path(record: Mapping[str, Any], path: str) -> Any:
    """The value at dotted ``path`` in ``record``, or ``None`` when any step is missing."""
    return compile_path(path)(record)
