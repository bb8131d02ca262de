"""Time zone names as Open Connectors users write them, resolved to ``tzinfo`` objects.

Open Connectors ran on Java, so configurations contain whatever ``java.util.TimeZone`` and
``java.time.ZoneId`` accept: IANA names, ``GMT``/``UTC``, offsets in several spellings and the
legacy three-letter ids of ``ZoneId.SHORT_IDS`` (``PST``, ``EST``...). Java silently maps an
unknown id to GMT; we refuse it instead, because a wrong zone shifts every watermark and
silently drops events.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from datetime import UTC, timedelta, timezone, tzinfo

from app.domain.limits import MAX_TIMEZONE_NAME_LENGTH

__all__ = [
    "UnknownTimeZoneError",
    "resolve_timezone",
    "zone_from_text",
]


class UnknownTimeZoneError(ValueError):
    """A time zone name that none of the accepted spellings matches."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown time zone {name!r}")
        self.name = name


# java.time.ZoneId.SHORT_IDS, verbatim: EST, MST and HST are fixed offsets there, the others
# are regions (so PST follows daylight saving time, as it does for Open Connectors).
_JAVA_SHORT_IDS: dict[str, str] = {
    "ACT": "Australia/Darwin",
    "AET": "Australia/Sydney",
    "AGT": "America/Argentina/Buenos_Aires",
    "ART": "Africa/Cairo",
    "AST": "America/Anchorage",
    "BET": "America/Sao_Paulo",
    "BST": "Asia/Dhaka",
    "CAT": "Africa/Harare",
    "CNT": "America/St_Johns",
    "CST": "America/Chicago",
    "CTT": "Asia/Shanghai",
    "EAT": "Africa/Addis_Ababa",
    "ECT": "Europe/Paris",
    "IET": "America/Indiana/Indianapolis",
    "IST": "Asia/Kolkata",
    "JST": "Asia/Tokyo",
    "MIT": "Pacific/Apia",
    "NET": "Asia/Yerevan",
    "NST": "Pacific/Auckland",
    "PLT": "Asia/Karachi",
    "PNT": "America/Phoenix",
    "PRT": "America/Puerto_Rico",
    "PST": "America/Los_Angeles",
    "SST": "Pacific/Guadalcanal",
    "VST": "Asia/Ho_Chi_Minh",
    "EST": "-05:00",
    "MST": "-07:00",
    "HST": "-10:00",
}

# Abbreviations as they appear *inside date values* (pattern letter ``z``). Unlike the Java
# short ids above, these are fixed offsets: "PDT" in a value means -07:00, whatever the date.
# Ambiguous ones (BST, IST as Irish time...) take the reading Java's English zone strings give.
_ABBREVIATION_MINUTES: dict[str, int] = {
    "UTC": 0,
    "UT": 0,
    "GMT": 0,
    "WET": 0,
    "WEST": 60,
    "CET": 60,
    "CEST": 120,
    "MET": 60,
    "MEST": 120,
    "EET": 120,
    "EEST": 180,
    "MSK": 180,
    "SAST": 120,
    "WAT": 60,
    "CAT": 120,
    "EAT": 180,
    "IST": 330,
    "PKT": 300,
    "WIB": 420,
    "HKT": 480,
    "AWST": 480,
    "JST": 540,
    "KST": 540,
    "ACST": 570,
    "ACDT": 630,
    "AEST": 600,
    "AEDT": 660,
    "NZST": 720,
    "NZDT": 780,
    "NST": -210,
    "NDT": -150,
    "AST": -240,
    "ADT": -180,
    "EST": -300,
    "EDT": -240,
    "CST": -360,
    "CDT": -300,
    "MST": -420,
    "MDT": -360,
    "PST": -480,
    "PDT": -420,
    "AKST": -540,
    "AKDT": -480,
    "HST": -600,
    "HDT": -540,
}

_UTC_NAMES = frozenset({"Z", "UTC", "GMT", "UT", "UCT", "ZULU", "ETC/UTC", "ETC/GMT"})

# "+08:00", "-8:00", "-0800", "+5", "GMT-08:00", "UTC+5": optional GMT/UTC/UT prefix, a sign,
# one or two hour digits and optional minutes with or without a colon.
_OFFSET_RE = re.compile(r"(?:GMT|UTC|UT)?\s*([+-])(\d{1,2})(?::?(\d{2}))?", re.IGNORECASE)

# Java refuses offsets beyond ±18:00; so do we (it also keeps datetime arithmetic in range).
_MAX_OFFSET_MINUTES = 18 * 60


def _fixed_offset(minutes: int) -> tzinfo:
    """A fixed-offset zone; zero is the shared ``UTC`` object so identity checks stay cheap."""
    if minutes == 0:
        return UTC
    return _fixed_offset_cached(minutes)


@functools.lru_cache(maxsize=256)
def _fixed_offset_cached(minutes: int) -> tzinfo:
    return timezone(timedelta(minutes=minutes))


def _parse_offset(name: str) -> tzinfo | None:
    match = _OFFSET_RE.fullmatch(name)
    if match is None:
        return None
    sign, hours, minutes = match.groups()
    total = int(hours) * 60 + int(minutes or 0)
    if int(minutes or 0) >= 60 or total > _MAX_OFFSET_MINUTES:
        return None
    return _fixed_offset(-total if sign == "-" else total)


@functools.cache
def _iana_names_by_lower_case() -> dict[str, str]:
    # Built only when an exact lookup failed: listing the zone database takes tens of ms.
    return {name.lower(): name for name in zoneinfo.available_timezones()}


# The shape of every IANA zone name ("America/Port-au-Prince", "Etc/GMT+8"). Anything else
# is not looked up at all: a failed lookup searches the zone path and the tzdata package
# (a fraction of a millisecond each), and ``${dateTimeZone:...}`` may offer many candidates.
_IANA_SHAPE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+)*")


def _load_iana(name: str) -> tzinfo | None:
    if not _IANA_SHAPE_RE.fullmatch(name):
        return None
    for candidate in (name, _iana_names_by_lower_case().get(name.lower())):
        if not candidate:
            continue
        try:
            return zoneinfo.ZoneInfo(candidate)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            # OSError: a directory of the zone database ("America") is not a zone.
            continue
    return None


@functools.lru_cache(maxsize=512)
def resolve_timezone(name: str) -> tzinfo:
    """Resolve a configured zone name, trying the spellings in the order Java would.

    Order: UTC aliases (``Z``, ``UTC``, ``GMT``...), Java's short ids (``PST`` is
    America/Los_Angeles, ``EST`` is a fixed -05:00), offsets (``+08:00``, ``-8:00``, ``-0800``,
    ``GMT-08:00``, ``UTC+5``), IANA names (case-insensitive as a last resort), and finally the
    fixed-offset abbreviations Java lacks as ids but users still write (``PDT`` = -07:00,
    ``CEST`` = +02:00). Results are cached; unknown names raise :class:`UnknownTimeZoneError`,
    as do names longer than ``MAX_TIMEZONE_NAME_LENGTH`` (no zone is that long), before any
    lookup: the zone database is not searched for tenant text of any size.
    """
    if len(name) > MAX_TIMEZONE_NAME_LENGTH:
        raise UnknownTimeZoneError(name[:MAX_TIMEZONE_NAME_LENGTH] + "...")
    text = name.strip()
    if not text:
        raise UnknownTimeZoneError(name)
    upper = text.upper()
    if upper in _UTC_NAMES:
        return UTC
    short = _JAVA_SHORT_IDS.get(upper)
    if short is not None:
        return resolve_timezone(short)
    zone = _parse_offset(text) or _load_iana(text)
    if zone is not None:
        return zone
    minutes = _ABBREVIATION_MINUTES.get(upper)
    if minutes is not None:
        return _fixed_offset(minutes)
    raise UnknownTimeZoneError(name)


@functools.lru_cache(maxsize=512)
def zone_from_text(text: str) -> tzinfo:
    """Resolve a zone written *inside a date value* (``Z``, ``+0000``, ``GMT-8:00``, ``PDT``).

    Abbreviations are read as the fixed offset they denote (``PST`` in a value is -08:00 even
    in July), which is how ``SimpleDateFormat`` parses them; anything else goes through
    :func:`resolve_timezone`. Cached because a feed repeats the same few zone strings.
    """
    minutes = _ABBREVIATION_MINUTES.get(text.upper())
    if minutes is not None:
        return _fixed_offset(minutes)
    return resolve_timezone(text)
