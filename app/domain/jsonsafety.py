"""Reading JSON that a tenant sent, so that every bad input is a 400 naming its place.

``json.loads`` accepts things PostgreSQL and our handlers cannot take: ``\\u0000``
(PostgreSQL text and jsonb refuse NUL), lone surrogates such as ``\\ud800`` (not
encodable as UTF-8) and nesting deep enough to raise ``RecursionError``. Each of
these was a 500 — after the OAuth code had been spent. :func:`loads_checked` reads
the text and walks the result once, iteratively (linear, no recursion), and
:func:`check_value` does the same walk for values that were decoded elsewhere.
"""

from __future__ import annotations

import json
import re
from typing import Any

from app.domain.limits import MAX_JSON_DEPTH

__all__ = ["UnsafeJson", "check_value", "loads_checked"]

# A NUL, or a UTF-16 surrogate code point (only lone ones survive json.loads in str).
_BAD_CHAR_RE = re.compile("[\x00\ud800-\udfff]")
# In JSON text: what could decode to one of those (escapes, or the characters themselves).
# A match is only a suspicion (an escaped backslash, a valid surrogate pair): the walk of
# :func:`check_value` decides, and names the field.
_SUSPECT_TEXT_RE = re.compile(r"\\u0000|\\u[dD][89a-fA-F][0-9a-fA-F]{2}|[\x00\ud800-\udfff]")
_JSON_STRING_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')  # unrolled: no per-char alternation
_NOT_BRACKET_RE = re.compile(r"[^\[\]{}]+")
_INNERMOST_RE = re.compile(r"\[\]|\{\}")


class UnsafeJson(ValueError):
    """JSON that cannot be stored; ``field`` is the dotted path of the offending value."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = f"{field}: {message}"


def _describe(text: str) -> str:
    match = _BAD_CHAR_RE.search(text)
    assert match is not None
    char = match.group()
    return "must not contain NUL characters" if char == "\x00" else "contains a lone surrogate"


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def check_value(value: Any, root: str = "", max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse NUL, lone surrogates (in keys and strings) and nesting beyond ``max_depth``."""
    stack: list[tuple[Any, str, int]] = [(value, root, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            if _BAD_CHAR_RE.search(item):
                raise UnsafeJson(path or "body", _describe(item))
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                # Name the top-level field: the full path of a deep value is itself huge.
                top = re.split(r"[.\[]", path, maxsplit=1)[0] if path else ""
                raise UnsafeJson(top or root or "body", f"nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    if _BAD_CHAR_RE.search(key):
                        raise UnsafeJson(_join(path, "<key>"), _describe(key))
                    stack.append((child, _join(path, key), depth + 1))
            else:
                stack.extend((child, _join(path, i), depth + 1) for i, child in enumerate(item))


def _deeper_than(text: str, max_depth: int) -> bool:
    """Whether JSON ``text`` nests containers more than ``max_depth`` levels deep.

    Strings are removed (brackets inside them do not count), then everything but the
    brackets; each pass of :data:`_INNERMOST_RE` removes one level of nesting, so brackets
    left after ``max_depth`` passes mean deeper nesting. Every pass is one linear regex
    pass in C, and there are at most ``max_depth + 1`` of them.
    """
    brackets = _NOT_BRACKET_RE.sub("", _JSON_STRING_RE.sub("", text))
    for _ in range(max_depth):
        if not brackets:
            return False
        brackets = _INNERMOST_RE.sub("", brackets)
    return bool(brackets)


def loads_checked(raw: str | bytes, field: str = "body", max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` that raises :class:`UnsafeJson` (naming ``field``) for every bad input.

    The common case costs two regex passes over the text, not a Python-level walk of
    every value: the walk runs only when the text holds something suspicious.
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UnsafeJson(field, "is not valid UTF-8") from exc
    try:
        value = json.loads(raw)
    except RecursionError as exc:
        raise UnsafeJson(field, f"nested deeper than {max_depth} levels") from exc
    except ValueError as exc:
        raise UnsafeJson(field, f"is not valid JSON ({exc})") from exc
    if _SUSPECT_TEXT_RE.search(raw) or _deeper_than(raw, max_depth):
        check_value(value, "" if field == "body" else field, max_depth)
    return value
