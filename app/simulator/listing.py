"""Keap list-endpoint query parsing and envelope rendering (pure, no aiohttp).

Decisions where Keap is undocumented:

* ``limit`` above the maximum (1000) is clamped, not rejected; ``limit < 1`` or a non-integer is
  a 400. Default 1000.
* ``since`` is inclusive (``>=``) and ``until`` exclusive (``<``), both at millisecond precision.
* ``next`` is present on every page, including the last and past the end; ``previous`` too (at
  offset 0 it points at offset 0). A client walks until it gets an empty page.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.simulator.dates import DateParseError, parse_iso_ms
from app.simulator.store import Page, QueryError

__all__ = ["DEFAULT_LIMIT", "ListParams", "parse_list_query", "render_envelope"]

DEFAULT_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class ListParams:
    limit: int
    offset: int
    since: int | None
    until: int | None
    order: str
    descending: bool


def _int(query: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise QueryError(f"Invalid {name} parameter: {raw!r}") from None
    if value < minimum:
        raise QueryError(f"Invalid {name} parameter: must be >= {minimum}")
    return value


def _date(query: Mapping[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return parse_iso_ms(raw)
    except DateParseError:
        raise QueryError(f"Invalid {name} parameter: {raw!r} is not an ISO-8601 date") from None


def parse_list_query(query: Mapping[str, str], max_limit: int = DEFAULT_LIMIT) -> ListParams:
    """Parse ``limit, offset, since, until, order, order_direction``; other keys are ignored."""
    limit = min(_int(query, "limit", max_limit, 1), max_limit)
    offset = _int(query, "offset", 0, 0)
    direction = (query.get("order_direction") or "ASCENDING").upper()
    if direction not in ("ASCENDING", "DESCENDING"):
        raise QueryError(f"Invalid order_direction: {direction!r}; use ASCENDING or DESCENDING")
    order = query.get("order") or "id"
    return ListParams(
        limit,
        offset,
        _date(query, "since"),
        _date(query, "until"),
        order,
        direction == "DESCENDING",
    )


def other_params(raw_query: str) -> str:
    """The raw (still percent-encoded) query without ``limit``/``offset``, to reuse in links."""
    return "&".join(
        p for p in raw_query.split("&") if p and not p.startswith(("limit=", "offset="))
    )


def page_url(base: str, rest: str, limit: int, offset: int) -> str:
    """``base?limit=..&offset=..&<other original params>`` (Keap puts limit/offset first)."""
    return (
        f"{base}?limit={limit}&offset={offset}&{rest}"
        if rest
        else (f"{base}?limit={limit}&offset={offset}")
    )


def render_envelope(
    resource: str, page: Page, params: ListParams, base: str, raw_query: str
) -> bytes:
    """The JSON body of a list response; ``raw_query`` is the request's encoded query string."""
    rest = other_params(raw_query)
    body: dict[str, Any] = {
        resource: page.records,
        "count": page.count,
        "next": page_url(base, rest, params.limit, params.offset + params.limit),
        "previous": page_url(base, rest, params.limit, max(params.offset - params.limit, 0)),
    }
    return json.dumps(body, separators=(",", ":")).encode()
