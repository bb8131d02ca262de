"""Resource URLs of ``event.poller.configuration``: Open Connectors compatibility and templates.

A configured ``url`` is a path relative to the provider REST base. Configurations written for
Open Connectors address the element's *hub* (``/hubs/crm/contacts``) and filter with CEQL
(``where=lastUpdated>'${gmtDate:...}'``); :func:`normalize_resource_url` maps both onto Keap's
own API (``/contacts?since=...``) so such configurations keep working.

Template variables are filled with the poll's lower bound: ``${gmtDate:FMT}``,
``${date:FMT}`` (instance zone), ``${dateTimeZone:ZONE:FMT}``, ``${epoch}`` (ms),
``${epoch:ms}``, ``${epoch:s}`` and ``${epoch:us}``. Rendered values are percent-encoded so
that a server decodes exactly the text the format produced (a ``+`` in an offset would
otherwise arrive as a space).

Every function here runs on tenant text inside the API's event loop, so each is linear in
the length of its input (no regex that can backtrack over it, no nested scans) and the input
itself is bounded by :mod:`app.domain.limits` before any work is done.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from urllib.parse import quote, unquote

from app.domain.dateformats import DateFormat, DateFormatError, compile_format
from app.domain.limits import (
    MAX_RESOURCE_URL_LENGTH,
    MAX_TEMPLATE_VARIABLES,
    MAX_TIMEZONE_NAME_LENGTH,
)
from app.domain.timezones import UnknownTimeZoneError, resolve_timezone

__all__ = ["TemplateError", "UrlTemplate", "compile_template", "normalize_resource_url"]


class TemplateError(ValueError):
    """A resource URL that cannot be used: not relative, or a bad template variable."""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_UNITS = {"ms": 1000, "s": 1_000_000, "us": 1}

# Any Open Connectors hub prefix: Keap's API has no "hubs" resource, so stripping it is safe.
_HUBS_PREFIX_RE = re.compile(r"\A/hubs/[A-Za-z0-9_-]+(?=/|\Z)")
# The CEQL clauses that mean "changed since X"; anything more complex is left untouched.
# The operand is one value: quoted (a template inside may contain quotes itself) or bare.
# '+' counts as a space around the operator only: inside a value it is usually an offset.
# A bare operand cannot *start* with a space or '+': otherwise the run of separators before
# it could be split between the two in every possible way (quadratic backtracking on
# ``since>+++...``). Every other piece is anchored by a literal, so a match is linear.
_CEQL_SINCE_RE = re.compile(
    r"(?:since[\s+]*+(?:>=|>|=)|lastUpdated[\s+]*+(?:>=|>))[\s+]*+"
    r"(?:'(\$\{[^}]*\}|[^']*)'|\"(\$\{[^}]*\}|[^\"]*)\"|(\$\{[^}]*\}|[^\s'\"+][^\s'\"]*))",
    re.IGNORECASE,
)
# Characters that never belong in a resource URL: C0 controls, DEL and C1 controls (a CR/LF
# would end the request line), and the backslash, which some servers read as '/'.
_FORBIDDEN_URL_CHARS_RE = re.compile("[\x00-\x1f\x7f-\x9f\\\\]")
# Decoding rounds for a path such as ``%25252e``; a legitimate path needs at most one.
_MAX_DECODE_ROUNDS = 4

# Characters left as they are in a rendered value. ':' is harmless in a query and keeps
# times readable in logs; '+', '&', '=', ' ' and quotes must be encoded for the server to
# read the value back exactly. In the path, '/' would split a segment, so it is encoded there.
_QUERY_SAFE = ":/,"
_PATH_SAFE = ":,"


def _split_variables(text: str) -> tuple[list[str], str | None]:
    """Split ``text`` into literal, variable body, literal, ... in one left-to-right pass.

    A variable is ``${`` up to the next ``}`` (its body may contain ``${`` itself, as the
    former ``\\$\\{([^}]*)\\}`` regex read it). Returns the pieces (odd indexes are variable
    bodies) and the unterminated rest, if any. Each character is looked at a bounded number
    of times; a regex ``finditer`` retried the scan to the end of the text from every
    ``${``, which was quadratic.
    """
    pieces: list[str] = []
    position = 0
    while True:
        start = text.find("${", position)
        if start < 0:
            pieces.append(text[position:])
            return pieces, None
        end = text.find("}", start + 2)
        if end < 0:
            pieces.append(text[position:start])
            return pieces, text[start:]
        pieces.extend((text[position:start], text[start + 2 : end]))
        position = end + 1


def _quote_outside_variables(text: str) -> str:
    """Percent-encode literal text but keep ``${...}`` variables verbatim for compilation."""
    pieces, rest = _split_variables(text)
    if rest is not None:
        pieces[-1] += rest  # not a variable: encoded as text like any other
    return "".join(
        "${" + piece + "}" if i % 2 else quote(piece, safe=_QUERY_SAFE)
        for i, piece in enumerate(pieces)
    )


def _rewrite_where(param: str) -> str:
    key, _, value = param.partition("=")
    if key != "where":
        return param
    match = _CEQL_SINCE_RE.fullmatch(unquote(value).strip(" +"))
    if match is None:
        return param
    operand = next(group for group in match.groups() if group is not None)
    return "since=" + _quote_outside_variables(operand)


def normalize_resource_url(url: str) -> str:
    """Turn an Open Connectors resource URL into a path relative to the Keap REST base.

    Strips a leading ``/hubs/<hub>`` (``crm``, ``ecommerce``...), ensures a leading ``/`` and
    rewrites a CEQL ``where`` that is exactly ``since='X'``, ``lastUpdated>'X'`` or
    ``lastUpdated>='X'`` (URL-encoded or not, quotes optional) into ``since=X``, keeping the
    other query parameters in place. Idempotent. Absolute URLs, dot segments (also encoded,
    once or more), encoded slashes, backslashes and control characters are refused: the
    provider's OAuth token is sent with every request, so the URL must stay on its API.
    """
    if len(url) > MAX_RESOURCE_URL_LENGTH:
        raise TemplateError(f"the url must be at most {MAX_RESOURCE_URL_LENGTH} characters")
    text = url.strip()
    if not text:
        raise TemplateError("the url is empty")
    path, sep, query = text.partition("?")
    if "://" in path or path.startswith("//"):
        raise TemplateError(f"{url!r} must be a path relative to the provider API, not a URL")
    if not path.startswith("/"):
        path = "/" + path
    path = _HUBS_PREFIX_RE.sub("", path) or "/"
    _check_path(url, path)
    if _FORBIDDEN_URL_CHARS_RE.search(unquote(query)):
        raise TemplateError(f"{url!r} must not contain control characters or backslashes")
    if query:
        query = "&".join(_rewrite_where(param) for param in query.split("&"))
    return path + sep + query


def _check_path(url: str, path: str) -> None:
    """Refuse a path that a server could resolve outside the resource it names.

    The path is sent as written, so it is judged as the provider will read it: decoded
    (repeatedly: ``%252e`` is ``%2e`` once decoded, and some proxies decode twice), with
    ``.``/``..`` segments, encoded slashes, backslashes and control characters refused.
    """
    decoded = path
    for _ in range(_MAX_DECODE_ROUNDS):
        try:
            once = unquote(decoded, errors="strict")
        except UnicodeDecodeError:
            raise TemplateError(f"{url!r} is not valid percent-encoded UTF-8") from None
        if once == decoded:
            break
        decoded = once
    else:
        raise TemplateError(f"{url!r} is percent-encoded too many times")
    if _FORBIDDEN_URL_CHARS_RE.search(decoded):
        raise TemplateError(f"{url!r} must not contain control characters or backslashes")
    if decoded.count("/") != path.count("/"):
        raise TemplateError(f"{url!r} must not contain encoded slashes")
    if any(segment in (".", "..") for segment in decoded.split("/")):
        raise TemplateError(f"{url!r} must not contain '.' or '..' segments")


Renderer = Callable[[datetime, tzinfo], str]


@dataclass(frozen=True, slots=True)
class _Variable:
    name: str
    render: Renderer
    safe: str

    def value(self, lower_bound: datetime, instance_tz: tzinfo) -> str:
        return quote(self.render(lower_bound, instance_tz), safe=self.safe)


@dataclass(frozen=True)
class UrlTemplate:
    """A normalized resource URL with its ``${...}`` variables parsed and validated."""

    url: str
    parts: tuple[str | _Variable, ...] = field(repr=False, compare=False)

    def render(self, lower_bound: datetime, instance_tz: tzinfo) -> str:
        """The URL with every variable filled from ``lower_bound`` (naive means UTC).

        Values are truncated to the format's precision, never rounded up, so the bound sent
        to the provider is never later than ``lower_bound``.
        """
        bound = lower_bound.replace(tzinfo=UTC) if lower_bound.tzinfo is None else lower_bound
        return "".join(
            part if isinstance(part, str) else part.value(bound, instance_tz) for part in self.parts
        )


def _epoch_renderer(name: str, unit: str) -> Renderer:
    if unit not in _EPOCH_UNITS:
        raise TemplateError(f"unknown epoch unit in ${{{name}}}; use ms, s or us")
    step = timedelta(microseconds=_EPOCH_UNITS[unit])
    return lambda bound, _tz: str((bound - _EPOCH) // step)


def _compile_fmt(name: str, pattern: str) -> DateFormat:
    try:
        return compile_format(pattern)
    except DateFormatError as exc:
        raise TemplateError(f"${{{name}}}: {exc}") from None


def _split_zone_and_format(name: str, rest: str) -> tuple[tzinfo, DateFormat]:
    """Split ``ZONE:FMT`` where both may contain colons (``-08:00:HH:mm``).

    Rule: the zone is the *longest* prefix ending before a colon that resolves as a time zone
    and leaves a format that compiles. Longest, not shortest, because offsets end in digits:
    with the shortest rule ``-8:00:yyyy`` would split into zone ``-8`` and format ``00:yyyy``.
    Zone names never contain a colon followed by a valid format, so this is unambiguous.
    """
    # Only colons that leave a zone of plausible length are candidates: with every colon a
    # candidate, ``${dateTimeZone:::::...}`` tried a zone lookup and a format compilation
    # per colon, each on a long prefix (quadratic). Now at most MAX_TIMEZONE_NAME_LENGTH tries.
    colons = [i for i, char in enumerate(rest[: MAX_TIMEZONE_NAME_LENGTH + 1]) if char == ":"]
    for i in reversed(colons):
        try:
            zone = resolve_timezone(rest[:i])
        except UnknownTimeZoneError:
            continue
        try:
            return zone, compile_format(rest[i + 1 :])
        except DateFormatError:
            continue
    raise TemplateError(
        f"${{{name}}}: expected dateTimeZone:ZONE:FORMAT with a known time zone and a valid "
        "date format"
    )


def _renderer(name: str) -> Renderer:
    kind, colon, rest = name.partition(":")
    if kind == "epoch":
        return _epoch_renderer(name, rest if colon else "ms")
    if kind in ("gmtDate", "date") and colon:
        fmt = _compile_fmt(name, rest)
        if kind == "gmtDate":
            return lambda bound, _tz: fmt.format(bound, UTC)
        return fmt.format
    if kind == "dateTimeZone":
        zone, fmt = _split_zone_and_format(name, rest)
        return lambda bound, _tz: fmt.format(bound, zone)
    raise TemplateError(
        f"unknown URL template variable ${{{name}}}; expected gmtDate:FMT, date:FMT, "
        "dateTimeZone:ZONE:FMT, epoch, epoch:ms, epoch:s or epoch:us"
    )


@functools.lru_cache(maxsize=1024)
def compile_template(url: str) -> UrlTemplate:
    """Normalize ``url`` (see :func:`normalize_resource_url`) and parse its variables.

    Raises :class:`TemplateError` naming the offending variable. Cached: the poller may call
    it on every poll with the stored configuration.
    """
    normalized = normalize_resource_url(url)
    pieces, rest = _split_variables(normalized)
    if rest is not None:
        raise TemplateError(f"unterminated template variable in {url!r}")
    if len(pieces) // 2 > MAX_TEMPLATE_VARIABLES:
        raise TemplateError(f"at most {MAX_TEMPLATE_VARIABLES} template variables are allowed")
    query_start = normalized.find("?")
    parts: list[str | _Variable] = []
    offset = 0
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            parts.append(piece)
            offset += len(piece)
            continue
        in_query = 0 <= query_start < offset
        parts.append(_Variable(piece, _renderer(piece), _QUERY_SAFE if in_query else _PATH_SAFE))
        offset += len(piece) + 3  # "${" + body + "}"
    return UrlTemplate(normalized, tuple(part for part in parts if part != ""))
