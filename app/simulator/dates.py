"""Date rendering and parsing the way Keap does it.

Keap renders record dates to the *second* (``2024-11-07T20:35:13.000+0000``) while keeping the
true millisecond time internally (it leaks through ``last_updated_utc_millis`` on contacts and
through ``since``/``until``, which compare at millisecond precision). Pollers must therefore cope
with many records sharing one rendered timestamp; the simulator reproduces that exactly.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from functools import lru_cache

_SPACE_OFFSET = re.compile(r" (\d\d:?\d\d)$")

__all__ = ["DateParseError", "iso_ms_z", "now_ms", "parse_iso_ms", "render_keap"]


class DateParseError(ValueError):
    """A ``since``/``until`` value that is not ISO-8601."""


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds."""
    return time.time_ns() // 1_000_000


@lru_cache(maxsize=65536)
def _render_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000+0000", time.gmtime(second))


def render_keap(ms: int) -> str:
    """Render epoch ms as Keap does: truncated to the second, ``.000+0000`` suffix."""
    return _render_second(ms // 1000)


def iso_ms_z(ms: int) -> str:
    """Render epoch ms as ISO-8601 with milliseconds and ``Z`` (used by the admin API)."""
    second, milli = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + f".{milli:03d}Z"


def parse_iso_ms(value: str) -> int:
    """Parse ISO-8601 (``Z``, ``+0000``, ``+00:00`` or naive = UTC) to epoch milliseconds.

    Sub-millisecond digits are truncated, so ``since`` compares at millisecond precision.
    """
    text = value.strip()
    if not text:
        raise DateParseError("empty date")
    if " " in text:
        # An unencoded "+0000" in a query string arrives as " 0000"; accept it like "+0000".
        text = _SPACE_OFFSET.sub(r"+\1", text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise DateParseError(f"not an ISO-8601 date: {value!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    delta = parsed - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
