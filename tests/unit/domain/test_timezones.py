from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from app.domain.timezones import UnknownTimeZoneError, resolve_timezone, zone_from_text


def _offset_at(name: str, when: datetime) -> timedelta | None:
    return when.astimezone(resolve_timezone(name)).utcoffset()


WINTER = datetime(2024, 1, 15, 12, tzinfo=UTC)
SUMMER = datetime(2024, 7, 15, 12, tzinfo=UTC)


@pytest.mark.parametrize("name", ["UTC", "GMT", "Z", "utc", " gmt ", "Etc/UTC", "+00:00", "-0000"])
def test_utc_aliases_resolve_to_utc(name: str) -> None:
    assert resolve_timezone(name) is UTC


@pytest.mark.parametrize(
    ("name", "minutes"),
    [
        ("+08:00", 480),
        ("-8:00", -480),
        ("-0800", -480),
        ("-08", -480),
        ("+5", 300),
        ("GMT-08:00", -480),
        ("UTC+5", 300),
        ("GMT+5:30", 330),
        ("+05:45", 345),
    ],
)
def test_offsets(name: str, minutes: int) -> None:
    assert _offset_at(name, WINTER) == timedelta(minutes=minutes)
    assert _offset_at(name, SUMMER) == timedelta(minutes=minutes)


def test_iana_names_follow_daylight_saving() -> None:
    assert resolve_timezone("America/Los_Angeles") == ZoneInfo("America/Los_Angeles")
    assert _offset_at("America/Los_Angeles", WINTER) == timedelta(hours=-8)
    assert _offset_at("America/Los_Angeles", SUMMER) == timedelta(hours=-7)


def test_iana_names_are_case_insensitive_as_a_fallback() -> None:
    assert resolve_timezone("europe/paris") == ZoneInfo("Europe/Paris")


@pytest.mark.parametrize(
    ("name", "winter", "summer"),
    [
        # Java's ZoneId.SHORT_IDS: EST/MST/HST are fixed, the others are regions.
        ("EST", -5, -5),
        ("MST", -7, -7),
        ("HST", -10, -10),
        ("PST", -8, -7),
        ("CST", -6, -5),
        ("IST", 5.5, 5.5),
        ("JST", 9, 9),
        ("pst", -8, -7),
        # Not Java ids, but what users write: the fixed offset the abbreviation denotes.
        ("PDT", -7, -7),
        ("EDT", -4, -4),
        ("CEST", 2, 2),
    ],
)
def test_java_short_ids_and_abbreviations(name: str, winter: float, summer: float) -> None:
    assert _offset_at(name, WINTER) == timedelta(hours=winter)
    assert _offset_at(name, SUMMER) == timedelta(hours=summer)


@pytest.mark.parametrize(
    "name", ["", "  ", "Mars/Olympus", "America", "+25:00", "+08:99", "GMT+", "XYZ", "../etc"]
)
def test_unknown_names_raise_naming_the_value(name: str) -> None:
    with pytest.raises(UnknownTimeZoneError, match="unknown time zone") as info:
        resolve_timezone(name)
    assert info.value.name == name
    assert isinstance(info.value, ValueError)


def test_results_are_cached() -> None:
    assert resolve_timezone("America/New_York") is resolve_timezone("America/New_York")


def test_zone_text_in_values_reads_abbreviations_as_fixed_offsets() -> None:
    # "PST" in a value is -08:00 even in July, unlike the PST *zone id* (a region).
    assert SUMMER.astimezone(zone_from_text("PST")).utcoffset() == timedelta(hours=-8)
    assert zone_from_text("+0000") is UTC
    assert zone_from_text("Z") is UTC
    assert WINTER.astimezone(zone_from_text("GMT-8:00")).utcoffset() == timedelta(hours=-8)
