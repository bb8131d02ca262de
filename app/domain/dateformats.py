"""Java ``SimpleDateFormat`` patterns, compiled once into a regex and a converter table.

Open Connectors configurations describe date fields with ``SimpleDateFormat`` patterns (plus
the special names ``milliseconds`` and ``seconds`` for epoch numbers), and the poller parses a
date from every record of every poll, so :meth:`DateFormat.parse` is a hot path: a pattern is
compiled once (and cached) into one anchored regex whose groups feed plain converters.

Where this differs from Java, on purpose:

* The whole value must match. Java ignores trailing text (``yyyy-MM-dd`` "parses"
  ``2024-01-01T10:00:00+0200`` as midnight in the default zone); that silently moves dates and
  is the documented way Open Connectors lost events, so here it is an error.
* Out-of-range fields (month 13, 31 February) are errors instead of lenient roll-over.
* ``S`` with 1-3 letters is Java's millisecond *count* (``.5`` with ``S`` is 5 ms); 4 or more
  ``S`` letters are a decimal fraction (``SSSSSS`` is microseconds), which is what people mean
  by them and what Java gets wrong.
* ``X`` keeps the minutes of a non-whole-hour offset (``+0530``) instead of truncating.
* Only English month, weekday and AM/PM names; text is matched case-insensitively.
* A wall time that does not exist or occurs twice in the default zone (DST) resolves to the
  earlier instant (``fold=0``), so a lower bound derived from it never skips records.
* Each field but the zone is read greedily and never given back (an atomic group, as Java's
  parser reads a field once and moves on). Without that, adjacent fields whose texts overlap
  (``zE``: a zone abbreviation next to a weekday name) made the regex try every way to split
  a value between them, exponentially in the number of fields, on every record of every
  poll. Zones (``X``, ``Z``, ``z``) may give text back (``UTC-08`` in ``z-HH`` is the zone
  ``UTC`` then the hour ``08``), so a pattern may hold at most ``MAX_DATE_FORMAT_ZONE_FIELDS`` of
  them: the ways to split a value then stay a small constant.

Patterns are tenant text compiled inside the API's event loop: their length is bounded by
``MAX_DATE_FORMAT_LENGTH`` and compiling is linear in it.
"""

from __future__ import annotations

import functools
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from app.domain.limits import MAX_DATE_FORMAT_LENGTH, MAX_DATE_FORMAT_ZONE_FIELDS
from app.domain.timezones import UnknownTimeZoneError, zone_from_text

__all__ = ["DateFormat", "DateFormatError", "compile_format"]


class DateFormatError(ValueError):
    """A pattern that cannot be compiled, or a value that does not match its pattern."""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTH_BY_NAME = {name.lower(): i for i, full in enumerate(_MONTHS, 1) for name in (full, full[:3])}


def _names_regex(names: tuple[str, ...]) -> str:
    # Full names before abbreviations so that "March" is not read as "Mar" + "ch".
    alternatives = [n.lower() for n in names] + [n[:3].lower() for n in names]
    return "(?i:" + "|".join(alternatives) + ")"


_MONTH_RE = _names_regex(_MONTHS)
_WEEKDAY_RE = _names_regex(_WEEKDAYS)
# Offsets for X; general zones for Z and z (Java accepts the general forms for both).
_ISO_OFFSET_RE = r"Z|[+-][0-9]{2}(?::?[0-9]{2})?"
_GENERAL_ZONE_RE = (
    r"Z|[+-][0-9]{2}(?::?[0-9]{2})?"
    r"|(?:GMT|UTC|UT)(?:[+-][0-9]{1,2}(?::?[0-9]{2})?)?"
    r"|[A-Za-z]{2,5}"
)

# Slots of the parsed-fields list; the defaults are Java's (1970-01-01T00:00:00.000).
_YEAR, _MONTH, _DAY, _HOUR, _MINUTE, _SECOND, _MICRO, _HOUR12, _PM, _ZONE = range(10)
_DEFAULT_FIELDS: list[Any] = [1970, 1, 1, 0, 0, 0, 0, None, False, None]

_NUMERIC_LETTERS = frozenset("yMdHhkKmsS")
_ZONE_LETTERS = frozenset("XZz")
_MAX_FRACTION_DIGITS = 9

Render = Callable[[datetime], str]
Convert = Callable[[str], Any]


class DateFormat(ABC):
    """A compiled date format: renders instants and parses record values to UTC instants."""

    pattern: str

    @abstractmethod
    def format(self, dt: datetime, tz: tzinfo) -> str:
        """Render the instant ``dt`` as seen in zone ``tz`` (a naive ``dt`` is taken as UTC)."""

    @abstractmethod
    def parse(self, value: str | int | float, default_tz: tzinfo) -> datetime:
        """Parse ``value`` into an aware UTC datetime.

        A zone or offset inside the value wins over ``default_tz``. Raises
        :class:`DateFormatError` naming the value and the pattern when it does not match.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pattern!r})"


def _as_aware(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


def _mismatch(value: object, pattern: str, reason: str = "") -> DateFormatError:
    suffix = f": {reason}" if reason else ""
    return DateFormatError(f"{value!r} does not match date format {pattern!r}{suffix}")


class _EpochFormat(DateFormat):
    """``milliseconds`` / ``seconds``: numbers since 1970-01-01T00:00:00Z, zone-free."""

    def __init__(self, pattern: str, unit_us: int) -> None:
        self.pattern = pattern
        self._unit = timedelta(microseconds=unit_us)
        self._unit_us = unit_us

    def format(self, dt: datetime, tz: tzinfo) -> str:
        # Floor division: a rendered lower bound must never be later than the instant.
        return str((_as_aware(dt) - _EPOCH) // self._unit)

    def parse(self, value: str | int | float, default_tz: tzinfo) -> datetime:
        try:
            return _EPOCH + timedelta(microseconds=self._to_micros(value))
        except (ValueError, TypeError, OverflowError) as exc:
            raise _mismatch(value, self.pattern, "not an epoch number") from exc

    def _to_micros(self, value: object) -> int:
        if isinstance(value, bool):
            raise TypeError("booleans are not epoch numbers")
        if isinstance(value, str):
            text = value.strip()
            try:
                value = int(text)
            except ValueError:
                value = float(text)
        if isinstance(value, int):
            return value * self._unit_us
        if isinstance(value, float) and math.isfinite(value):
            return round(value * self._unit_us)
        raise ValueError("not a finite number")


@dataclass(frozen=True, slots=True)
class _Part:
    """One pattern element: its regex, where its group goes, and how it renders."""

    regex: str
    render: Render
    slot: int | None = None
    convert: Convert | None = None


class _PatternFormat(DateFormat):
    """A ``SimpleDateFormat`` pattern compiled to one anchored regex plus converters."""

    def __init__(self, pattern: str, parts: list[_Part]) -> None:
        self.pattern = pattern
        self._regex_source = "".join(
            part.regex if part.slot == _ZONE else f"(?>{part.regex})" for part in parts
        )
        self._renderers = tuple(part.render for part in parts)
        # Aligned with the regex groups: each part that captures has a slot and a converter.
        self._converters = tuple(
            (part.slot, part.convert)
            for part in parts
            if part.slot is not None and part.convert is not None
        )

    @functools.cached_property
    def _regex(self) -> re.Pattern[str]:
        # Compiled on first parse, not when the pattern is validated: compiling the regex is
        # most of the cost of a pattern, and a format used only in a URL template (rendered,
        # never parsed) or refused later in the same configuration never needs it.
        return re.compile(self._regex_source)

    def format(self, dt: datetime, tz: tzinfo) -> str:
        local = _as_aware(dt).astimezone(tz)
        return "".join([render(local) for render in self._renderers])

    def parse(self, value: str | int | float, default_tz: tzinfo) -> datetime:
        text = value if isinstance(value, str) else _coerce_text(value, self.pattern)
        match = self._regex.fullmatch(text)
        if match is None:
            raise _mismatch(value, self.pattern)
        fields = _DEFAULT_FIELDS.copy()
        try:
            for (slot, convert), group in zip(self._converters, match.groups(), strict=True):
                fields[slot] = convert(group)
            return _assemble(fields, default_tz)
        except (ValueError, OverflowError) as exc:
            raise _mismatch(value, self.pattern, str(exc)) from exc


def _coerce_text(value: object, pattern: str) -> str:
    # Numbers are accepted for digit-only patterns such as yyyyMMdd; anything else is an error.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise _mismatch(value, pattern, "expected a string")


def _assemble(fields: list[Any], default_tz: tzinfo) -> datetime:
    year, month, day, hour, minute, second, micro, hour12, pm, zone = fields
    if hour12 is not None:
        hour = hour12 % 12 + (12 if pm else 0)
    tz = default_tz if zone is None else zone
    dt = datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    return dt if tz is UTC else dt.astimezone(UTC)


# --- pattern tokenizer -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Field:
    letter: str
    count: int

    @property
    def numeric(self) -> bool:
        return self.letter in _NUMERIC_LETTERS and not (self.letter == "M" and self.count >= 3)


# One token per match, tried at each position in turn: a quote pair (a literal quote), a
# quoted text (in "unrolled loop" form: every character has one way to match, so a missing
# closing quote fails in one pass), a run of one pattern letter, or a run of other text.
_TOKEN_RE = re.compile(r"(''|'[^']*(?:''[^']*)*')|([A-Za-z])\2*|[^A-Za-z']+")


def _tokenize(pattern: str) -> list[str | _Field]:
    """Split a pattern into literal strings and letter runs, as ``SimpleDateFormat`` does."""
    tokens: list[str | _Field] = []
    # Adjacent literal pieces are collected and joined once (``str +=`` in a loop copies).
    literal: list[str] = []
    position = 0
    while position < len(pattern):
        match = _TOKEN_RE.match(pattern, position)
        if match is None:  # only a quote that is never closed matches nothing
            raise DateFormatError("unterminated quote")
        text, quoted, letter = match.group(), match.group(1), match.group(2)
        position = match.end()
        if letter is not None:
            if literal:
                tokens.append("".join(literal))
                literal = []
            tokens.append(_Field(letter, len(text)))
        elif quoted is not None:
            literal.append("'" if quoted == "''" else quoted[1:-1].replace("''", "'"))
        else:
            literal.append(text)
    if literal:
        tokens.append("".join(literal))
    return tokens


# --- field builders ----------------------------------------------------------------------


def _digits(count: int, abutting: bool, max_width: int) -> str:
    # Java reads exactly `count` digits when the next field is numeric too (yyyyMMdd),
    # otherwise as many as are there; we cap at a field's natural width.
    if abutting:
        return f"([0-9]{{{count}}})"
    return f"([0-9]{{1,{max(count, max_width)}}})"


def _padded(attr: str, count: int) -> Render:
    return lambda dt: str(getattr(dt, attr)).zfill(count)


def _two_digit_year_converter() -> Convert:
    # Java puts a two-digit year within 80 years before and 20 years after "now".
    start = datetime.now(UTC).year - 80

    def convert(text: str) -> int:
        if len(text) != 2:
            return int(text)
        year = start // 100 * 100 + int(text)
        return year + 100 if year < start else year

    return convert


def _year(count: int, abutting: bool) -> _Part:
    if count == 2:
        return _Part(
            _digits(2, abutting, 4),
            lambda dt: f"{dt.year % 100:02d}",
            _YEAR,
            _two_digit_year_converter(),
        )
    return _Part(_digits(count, abutting, 4), _padded("year", count), _YEAR, int)


def _month(count: int, abutting: bool) -> _Part:
    if count >= 3:
        width = None if count >= 4 else 3
        return _Part(
            f"({_MONTH_RE})",
            lambda dt: _MONTHS[dt.month - 1][:width],
            _MONTH,
            lambda text: _MONTH_BY_NAME[text.lower()],
        )
    return _Part(_digits(count, abutting, 2), _padded("month", count), _MONTH, int)


def _ranged(low: int, high: int, name: str) -> Convert:
    def convert(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"{name} {value} is out of range {low}-{high}")
        return value

    return convert


def _hour(letter: str, count: int, abutting: bool) -> _Part:
    """``H`` 0-23, ``k`` 1-24, ``h`` 1-12 and ``K`` 0-11 (the last two need ``a``)."""
    regex = _digits(count, abutting, 2)
    if letter == "H":
        return _Part(regex, _padded("hour", count), _HOUR, int)
    if letter == "k":
        one_to_24 = _ranged(1, 24, "hour")
        return _Part(
            regex,
            lambda dt: str(dt.hour or 24).zfill(count),
            _HOUR,
            lambda text: one_to_24(text) % 24,
        )
    if letter == "h":
        return _Part(
            regex, lambda dt: str(dt.hour % 12 or 12).zfill(count), _HOUR12, _ranged(0, 12, "hour")
        )
    return _Part(regex, lambda dt: str(dt.hour % 12).zfill(count), _HOUR12, _ranged(0, 11, "hour"))


def _fraction(count: int, abutting: bool) -> _Part:
    if count <= 3:
        return _Part(
            _digits(count, abutting, 3),
            lambda dt: str(dt.microsecond // 1000).zfill(count),
            _MICRO,
            lambda text: int(text) * 1000,
        )
    if count > _MAX_FRACTION_DIGITS:
        raise DateFormatError(f"at most {_MAX_FRACTION_DIGITS} fraction digits (S) are supported")
    return _Part(
        _digits(count, abutting, _MAX_FRACTION_DIGITS),
        lambda dt: f"{dt.microsecond:06d}{'0' * 3}"[:count],
        _MICRO,
        lambda text: int(text[:6].ljust(6, "0")),
    )


def _offset_text(offset: timedelta, colon: bool, hours_only_if_whole: bool = False) -> str:
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    if hours_only_if_whole and minutes == 0:
        return f"{sign}{hours:02d}"
    return f"{sign}{hours:02d}{':' if colon else ''}{minutes:02d}"


def _utcoffset(dt: datetime) -> timedelta:
    return dt.utcoffset() or timedelta(0)


def _iso_offset(count: int) -> _Part:
    if count > 3:
        raise DateFormatError("at most three X letters are supported")

    def render(dt: datetime) -> str:
        offset = _utcoffset(dt)
        if not offset:
            return "Z"
        return _offset_text(offset, colon=count == 3, hours_only_if_whole=count == 1)

    return _Part(f"({_ISO_OFFSET_RE})", render, _ZONE, zone_from_text)


def _zone_name(dt: datetime) -> str:
    """Zone abbreviation for ``z``, only if parsing it back yields the same offset.

    Abbreviations are ambiguous (IST is India, Ireland or Israel), so when the zone's own
    name would parse to a different offset we write Java's fallback form ``GMT+hh:mm``.
    """
    offset = _utcoffset(dt)
    name = dt.tzname() or ""
    if name.isascii() and name.isalpha():
        try:
            if dt.astimezone(zone_from_text(name)).utcoffset() == offset:
                return name
        except UnknownTimeZoneError:
            pass
    return "GMT" + _offset_text(offset, colon=True) if offset else "GMT"


def _zone(letter: str) -> _Part:
    regex = f"({_GENERAL_ZONE_RE})"
    if letter == "Z":
        return _Part(
            regex, lambda dt: _offset_text(_utcoffset(dt), colon=False), _ZONE, zone_from_text
        )
    return _Part(regex, _zone_name, _ZONE, zone_from_text)


def _text_part(letter: str, count: int) -> _Part:
    if letter == "a":
        return _Part(
            "((?i:am|pm))",
            lambda dt: "PM" if dt.hour >= 12 else "AM",
            _PM,
            lambda text: text.lower() == "pm",
        )
    # E: the weekday is rendered, and accepted but not checked when parsing (as Java does).
    width = None if count >= 4 else 3
    return _Part(_WEEKDAY_RE, lambda dt: _WEEKDAYS[dt.weekday()][:width])


def _numeric_part(field: _Field, abutting: bool) -> _Part:
    letter, count = field.letter, field.count
    if letter == "y":
        return _year(count, abutting)
    if letter == "M":
        return _month(count, abutting)
    if letter in "HhkK":
        return _hour(letter, count, abutting)
    if letter == "S":
        return _fraction(count, abutting)
    # d, m, s: datetime() itself rejects out-of-range values.
    attr, slot = {"d": ("day", _DAY), "m": ("minute", _MINUTE), "s": ("second", _SECOND)}[letter]
    return _Part(_digits(count, abutting, 2), _padded(attr, count), slot, int)


def _field_part(field: _Field, abutting: bool) -> _Part:
    if field.letter in _NUMERIC_LETTERS:
        return _numeric_part(field, abutting)
    if field.letter in "aE":
        return _text_part(field.letter, field.count)
    if field.letter == "X":
        return _iso_offset(field.count)
    if field.letter in "Zz":
        return _zone(field.letter)
    raise DateFormatError(f"unsupported pattern letter {field.letter!r}")


@functools.lru_cache(maxsize=512)
def _shared_field_part(field: _Field, abutting: bool) -> _Part:
    """:func:`_field_part`, built once per (letter, count, abutting) and shared by patterns.

    Parts are immutable and depend on nothing else, and a configuration may hold hundreds of
    distinct patterns made of the same few fields: building each part anew was most of the
    cost of validating one. ``yy`` is excluded: its pivot year moves with the clock.
    """
    return _field_part(field, abutting)


def _literal_part(text: str) -> _Part:
    return _Part(re.escape(text), lambda _dt: text)


def _compile_pattern(pattern: str) -> _PatternFormat:
    tokens = _tokenize(pattern)
    parts: list[_Part] = []
    for i, token in enumerate(tokens):
        if isinstance(token, str):
            parts.append(_literal_part(token))
            continue
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        abutting = token.numeric and isinstance(following, _Field) and following.numeric
        two_digit_year = token.letter == "y" and token.count == 2
        parts.append((_field_part if two_digit_year else _shared_field_part)(token, abutting))
    if not any(isinstance(token, _Field) for token in tokens):
        raise DateFormatError("it contains no date fields")
    fields = [token for token in tokens if isinstance(token, _Field)]
    if sum(1 for token in fields if token.letter in _ZONE_LETTERS) > MAX_DATE_FORMAT_ZONE_FIELDS:
        raise DateFormatError(
            f"at most {MAX_DATE_FORMAT_ZONE_FIELDS} zone fields (X, Z, z) are supported"
        )
    return _PatternFormat(pattern, parts)


_EPOCH_UNITS_US = {"milliseconds": 1000, "seconds": 1_000_000}


@functools.lru_cache(maxsize=1024)
def compile_format(pattern: str) -> DateFormat:
    """Compile a ``SimpleDateFormat`` pattern, or ``milliseconds``/``seconds``, once.

    Supported letters: ``y M d H h k K m s S a E Z X z``; ``'quoted'`` text and ``''`` for a
    quote; other non-letters are literals. Unknown letters raise :class:`DateFormatError`
    naming the letter and the pattern.
    """
    if len(pattern) > MAX_DATE_FORMAT_LENGTH:
        raise DateFormatError(f"a date format must be at most {MAX_DATE_FORMAT_LENGTH} characters")
    unit = _EPOCH_UNITS_US.get(pattern.strip().lower())
    if unit is not None:
        return _EpochFormat(pattern, unit)
    try:
        return _compile_pattern(pattern)
    except DateFormatError as exc:
        raise DateFormatError(f"invalid date format {pattern!r}: {exc}") from None
