from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from app.domain.dateformats import DateFormatError, compile_format

LA = ZoneInfo("America/Los_Angeles")
KOLKATA = ZoneInfo("Asia/Kolkata")
# 2024-03-05 (a Tuesday) 14:07:09.045678 UTC
INSTANT = datetime(2024, 3, 5, 14, 7, 9, 45678, tzinfo=UTC)


def parse(pattern: str, value: str | int | float, tz: timezone | ZoneInfo = UTC) -> datetime:
    return compile_format(pattern).parse(value, tz)


def fmt(pattern: str, dt: datetime = INSTANT, tz: timezone | ZoneInfo = UTC) -> str:
    return compile_format(pattern).format(dt, tz)


# --- Keap and Open Connectors formats -----------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        (
            "yyyy-MM-dd'T'HH:mm:ss.SSSZ",
            "2022-09-28T19:21:25.000+0000",
            datetime(2022, 9, 28, 19, 21, 25, tzinfo=UTC),
        ),
        (
            "yyyy-MM-dd'T'HH:mm:ss.SSS'Z'",
            "2022-09-28T19:21:25.123Z",
            datetime(2022, 9, 28, 19, 21, 25, 123000, tzinfo=UTC),
        ),
        (
            "yyyy-MM-dd'T'HH:mm:ssXXX",
            "2024-01-01T10:00:00Z",
            datetime(2024, 1, 1, 10, tzinfo=UTC),
        ),
        (
            "yyyy-MM-dd'T'HH:mm:ssXXX",
            "2024-01-01T10:00:00+02:00",
            datetime(2024, 1, 1, 8, tzinfo=UTC),
        ),
        (
            "EEE, dd MMM yyyy HH:mm:ss Z",
            "Mon, 01 Jan 2024 10:00:00 -0800",
            datetime(2024, 1, 1, 18, tzinfo=UTC),
        ),
        ("MM/dd/yyyy", "12/31/2023", datetime(2023, 12, 31, tzinfo=UTC)),
        (
            "yyyy/MM/dd HH:mm:ss",
            "2024/02/29 23:59:59",
            datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC),
        ),
        ("milliseconds", 1664411531590, datetime(2022, 9, 29, 0, 32, 11, 590000, tzinfo=UTC)),
    ],
)
def test_keap_and_open_connectors_formats(pattern: str, value: str, expected: datetime) -> None:
    parsed = parse(pattern, value)
    assert parsed == expected
    assert parsed.tzinfo is UTC


def test_keap_format_renders_like_keap() -> None:
    assert fmt("yyyy-MM-dd'T'HH:mm:ss.SSSZ") == "2024-03-05T14:07:09.045+0000"
    assert fmt("yyyy-MM-dd'T'HH:mm:ss.SSSZ", tz=LA) == "2024-03-05T06:07:09.045-0800"


# --- every letter, format and parse -------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "text"),
    [
        ("yyyy", "2024"),
        ("yy", "24"),
        ("y", "2024"),
        ("MM", "03"),
        ("M", "3"),
        ("MMM", "Mar"),
        ("MMMM", "March"),
        ("dd", "05"),
        ("d", "5"),
        ("HH", "14"),
        ("H", "14"),
        ("hh", "02"),
        ("h", "2"),
        ("kk", "14"),
        ("KK", "02"),
        ("mm", "07"),
        ("m", "7"),
        ("ss", "09"),
        ("s", "9"),
        ("SSS", "045"),
        ("S", "45"),
        ("SSSSSS", "045678"),
        ("a", "PM"),
        ("EEE", "Tue"),
        ("EEEE", "Tuesday"),
        ("Z", "+0000"),
        ("X", "Z"),
        ("XX", "Z"),
        ("XXX", "Z"),
        ("z", "UTC"),
    ],
)
def test_format_each_letter(pattern: str, text: str) -> None:
    assert fmt(pattern) == text


@pytest.mark.parametrize(
    ("pattern", "text"),
    [
        ("Z", "+0530"),
        ("X", "+0530"),
        ("XX", "+0530"),
        ("XXX", "+05:30"),
        ("z", "IST"),
        ("hh a", "07 PM"),
    ],
)
def test_format_offsets_in_a_non_utc_zone(pattern: str, text: str) -> None:
    assert fmt(pattern, tz=KOLKATA) == text


def test_format_offset_letters_in_whole_hour_zones() -> None:
    assert fmt("X", tz=LA) == "-08"
    assert fmt("XX", tz=LA) == "-0800"
    assert fmt("XXX", tz=LA) == "-08:00"
    assert fmt("z", tz=LA) == "PST"
    assert fmt("z", datetime(2024, 7, 1, tzinfo=UTC), LA) == "PDT"
    assert fmt("z", tz=timezone(timedelta(hours=-8))) == "GMT-08:00"


def test_format_midnight_and_noon_in_12_and_24_hour_letters() -> None:
    midnight = datetime(2024, 1, 1, 0, 30, tzinfo=UTC)
    noon = datetime(2024, 1, 1, 12, 30, tzinfo=UTC)
    assert fmt("h a|K a|k|H", midnight) == "12 AM|0 AM|24|0"
    assert fmt("h a|K a|k|H", noon) == "12 PM|0 PM|12|12"


BASE = "yyyy-MM-dd HH:mm:ss"


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("yyyy-M-d", "2024-3-5", datetime(2024, 3, 5, tzinfo=UTC)),
        ("yyyy-M-d", "2024-03-05", datetime(2024, 3, 5, tzinfo=UTC)),
        ("yyyy-MM-dd", "2024-3-5", datetime(2024, 3, 5, tzinfo=UTC)),
        ("d MMM yyyy", "5 mar 2024", datetime(2024, 3, 5, tzinfo=UTC)),
        ("d MMM yyyy", "5 March 2024", datetime(2024, 3, 5, tzinfo=UTC)),
        ("d MMMM yyyy", "5 Mar 2024", datetime(2024, 3, 5, tzinfo=UTC)),
        ("d MMMM yyyy", "5 SEPTEMBER 2024", datetime(2024, 9, 5, tzinfo=UTC)),
        ("yyyy-MM-dd h:m a", "2024-03-05 2:07 pm", datetime(2024, 3, 5, 14, 7, tzinfo=UTC)),
        ("yyyy-MM-dd hh:mm a", "2024-03-05 12:07 AM", datetime(2024, 3, 5, 0, 7, tzinfo=UTC)),
        ("yyyy-MM-dd hh:mm a", "2024-03-05 12:07 PM", datetime(2024, 3, 5, 12, 7, tzinfo=UTC)),
        ("yyyy-MM-dd hh:mm", "2024-03-05 02:07", datetime(2024, 3, 5, 2, 7, tzinfo=UTC)),
        ("yyyy-MM-dd K:mm a", "2024-03-05 0:07 PM", datetime(2024, 3, 5, 12, 7, tzinfo=UTC)),
        ("yyyy-MM-dd kk:mm", "2024-03-05 24:07", datetime(2024, 3, 5, 0, 7, tzinfo=UTC)),
        ("yyyy-MM-dd H:m:s", "2024-03-05 4:7:9", datetime(2024, 3, 5, 4, 7, 9, tzinfo=UTC)),
        ("EEE yyyy-MM-dd", "Tuesday 2024-03-05", datetime(2024, 3, 5, tzinfo=UTC)),
        ("EEEE yyyy-MM-dd", "tue 2024-03-05", datetime(2024, 3, 5, tzinfo=UTC)),
        (f"{BASE}.S", "2024-03-05 14:07:09.5", datetime(2024, 3, 5, 14, 7, 9, 5000, tzinfo=UTC)),
        (
            f"{BASE}.SSS",
            "2024-03-05 14:07:09.045",
            datetime(2024, 3, 5, 14, 7, 9, 45000, tzinfo=UTC),
        ),
        (
            f"{BASE}.SSSSSS",
            "2024-03-05 14:07:09.045678",
            datetime(2024, 3, 5, 14, 7, 9, 45678, tzinfo=UTC),
        ),
        (
            f"{BASE}.SSSSSSSSS",
            "2024-03-05 14:07:09.045678912",
            datetime(2024, 3, 5, 14, 7, 9, 45678, tzinfo=UTC),
        ),
        ("yyyyMMddHHmmss", "20240305140709", datetime(2024, 3, 5, 14, 7, 9, tzinfo=UTC)),
        ("yyyyMMdd", 20240305, datetime(2024, 3, 5, tzinfo=UTC)),
        ("HH:mm", "14:07", datetime(1970, 1, 1, 14, 7, tzinfo=UTC)),
    ],
)
def test_parse_fields(pattern: str, value: str, expected: datetime) -> None:
    assert parse(pattern, value) == expected


@pytest.mark.parametrize(
    ("suffix", "value", "hours"),
    [
        ("Z", "+0000", 0),
        ("Z", "-0800", 8),
        ("Z", "+05:30", -5.5),
        ("Z", "GMT-08:00", 8),
        ("Z", "Z", 0),
        ("X", "Z", 0),
        ("X", "-08", 8),
        ("X", "+0530", -5.5),
        ("XX", "-0800", 8),
        ("XXX", "-08:00", 8),
        ("XXX", "+05:30", -5.5),
        ("z", "UTC", 0),
        ("z", "GMT", 0),
        ("z", "PST", 8),
        ("z", "PDT", 7),
        ("z", "pdt", 7),
        ("z", "EST", 5),
        ("z", "GMT+5:30", -5.5),
        ("z", "GMT-0800", 8),
        ("z", "+0100", -1),
    ],
)
def test_parse_zones(suffix: str, value: str, hours: float) -> None:
    parsed = parse(f"{BASE} {suffix}", f"2024-07-01 12:00:00 {value}", LA)
    assert parsed == datetime(2024, 7, 1, 12, tzinfo=UTC) + timedelta(hours=hours)


def test_zone_in_the_value_wins_over_the_default() -> None:
    pattern = "yyyy-MM-dd'T'HH:mm:ssXXX"
    assert parse(pattern, "2024-01-01T10:00:00+02:00", LA) == datetime(2024, 1, 1, 8, tzinfo=UTC)


def test_default_zone_applies_without_zone_in_the_value() -> None:
    assert parse(BASE, "2024-01-01 10:00:00", LA) == datetime(2024, 1, 1, 18, tzinfo=UTC)
    assert parse(BASE, "2024-07-01 10:00:00", LA) == datetime(2024, 7, 1, 17, tzinfo=UTC)
    assert parse(BASE, "2024-01-01 10:00:00", KOLKATA) == datetime(2024, 1, 1, 4, 30, tzinfo=UTC)


def test_dst_boundaries_in_los_angeles() -> None:
    # Spring forward: 02:30 does not exist; it resolves like Java, to 03:30 PDT.
    assert parse(BASE, "2024-03-10 02:30:00", LA) == datetime(2024, 3, 10, 10, 30, tzinfo=UTC)
    assert parse(BASE, "2024-03-10 03:30:00", LA) == datetime(2024, 3, 10, 10, 30, tzinfo=UTC)
    # Fall back: 01:30 happens twice; the earlier instant (PDT) is taken.
    assert parse(BASE, "2024-11-03 01:30:00", LA) == datetime(2024, 11, 3, 8, 30, tzinfo=UTC)
    # An explicit abbreviation disambiguates.
    with_zone = f"{BASE} z"
    assert parse(with_zone, "2024-11-03 01:30:00 PST", LA) == datetime(
        2024, 11, 3, 9, 30, tzinfo=UTC
    )
    # Formatting across the boundary picks the right offset and name.
    before = datetime(2024, 11, 3, 8, 59, tzinfo=UTC)
    after = datetime(2024, 11, 3, 9, 1, tzinfo=UTC)
    assert fmt("HH:mm z Z", before, LA) == "01:59 PDT -0700"
    assert fmt("HH:mm z Z", after, LA) == "01:01 PST -0800"


def test_two_digit_years_use_javas_century_window() -> None:
    this_year = datetime.now(UTC).year
    recent = (this_year - 1) % 100
    assert parse("yy-MM-dd", f"{recent:02d}-01-01").year == this_year - 1
    old = (this_year - 85) % 100  # more than 80 years back: next century
    assert parse("yy-MM-dd", f"{old:02d}-01-01").year == this_year + 15
    assert parse("yy-MM-dd", "2024-01-01").year == 2024


# --- quoting --------------------------------------------------------------------------------


def test_quoted_literals_and_escaped_quotes() -> None:
    pattern = "yyyy-MM-dd'T'HH 'o''clock' ''"
    assert fmt(pattern) == "2024-03-05T14 o'clock '"
    assert parse(pattern, "2024-03-05T14 o'clock '") == datetime(2024, 3, 5, 14, tzinfo=UTC)


def test_quoted_letters_are_not_fields() -> None:
    assert fmt("'yyyy at' yyyy") == "yyyy at 2024"


def test_regex_characters_are_literals() -> None:
    pattern = "yyyy.MM.dd (HH)[mm]*+?"
    assert parse(pattern, "2024.03.05 (14)[07]*+?") == datetime(2024, 3, 5, 14, 7, tzinfo=UTC)
    with pytest.raises(DateFormatError):
        parse(pattern, "2024x03x05 (14)[07]*+?")


# --- epoch formats --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("milliseconds", 1664411531590, datetime(2022, 9, 29, 0, 32, 11, 590000, tzinfo=UTC)),
        ("milliseconds", "1664411531590", datetime(2022, 9, 29, 0, 32, 11, 590000, tzinfo=UTC)),
        ("milliseconds", 1664411531590.5, datetime(2022, 9, 29, 0, 32, 11, 590500, tzinfo=UTC)),
        ("milliseconds", -1, datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)),
        ("seconds", 1664411531, datetime(2022, 9, 29, 0, 32, 11, tzinfo=UTC)),
        ("seconds", "1664411531.25", datetime(2022, 9, 29, 0, 32, 11, 250000, tzinfo=UTC)),
        ("seconds", " 0 ", datetime(1970, 1, 1, tzinfo=UTC)),
    ],
)
def test_epoch_parse(pattern: str, value: str | int | float, expected: datetime) -> None:
    assert parse(pattern, value, LA) == expected


def test_epoch_format_floors_to_the_unit() -> None:
    assert fmt("milliseconds") == "1709647629045"
    assert fmt("seconds") == "1709647629"
    assert fmt("seconds", datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC)) == "-1"


@pytest.mark.parametrize("value", ["", "abc", "1e999", "nan", True, None, [1]])
def test_epoch_parse_rejects_non_numbers(value: object) -> None:
    with pytest.raises(DateFormatError, match="milliseconds"):
        compile_format("milliseconds").parse(value, UTC)  # type: ignore[arg-type]


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "value"),
    [
        ("yyyy-MM-dd", "2024-13-01"),
        ("yyyy-MM-dd", "2024-02-30"),
        ("yyyy-MM-dd", "2024-01-01T00:00:00"),  # trailing text is refused, unlike Java
        ("yyyy-MM-dd", " 2024-01-01"),
        ("yyyy-MM-dd", "24-01-01x"),
        ("yyyy-MM-dd HH:mm", "2024-01-01 25:00"),
        ("yyyy-MM-dd HH:mm", "2024-01-01 10:60"),
        ("yyyy-MM-dd hh a", "2024-01-01 13 PM"),
        ("yyyy-MM-dd kk", "2024-01-01 00"),
        ("MMM yyyy", "Foo 2024"),
        ("yyyy-MM-dd'T'HH:mm:ss.SSSZ", "2022-09-28T19:21:25.000"),
        ("yyyy-MM-dd'T'HH:mm:ss.SSSZ", "2022-09-28T19:21:25.000+2500"),
        ("yyyy-MM-dd z", "2024-01-01 QQQ"),
        ("yyyy-MM-dd", "２０２４-01-01"),  # full-width digits are not digits here
    ],
)
def test_mismatches_raise_with_value_and_pattern(pattern: str, value: str) -> None:
    with pytest.raises(DateFormatError) as info:
        parse(pattern, value)
    assert repr(value) in str(info.value)
    assert repr(pattern) in str(info.value)


def test_non_string_values_are_rejected() -> None:
    with pytest.raises(DateFormatError, match="expected a string"):
        compile_format("yyyy").parse(None, UTC)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("yyyy-MM-dd'T'HH:mm:ss.SSSQ", "unsupported pattern letter 'Q'"),
        ("YYYY-MM-dd", "unsupported pattern letter 'Y'"),
        ("yyyy-DDD", "unsupported pattern letter 'D'"),
        ("yyyy-MM-dd'T", "unterminated quote"),
        ("XXXX", "three X"),
        ("ss.SSSSSSSSSS", "fraction digits"),
        ("", "no date fields"),
        ("'only text'", "no date fields"),
    ],
)
def test_bad_patterns(pattern: str, message: str) -> None:
    with pytest.raises(DateFormatError, match=message) as info:
        compile_format(pattern)
    assert repr(pattern) in str(info.value)


def test_compiled_formats_are_cached() -> None:
    assert compile_format("yyyy-MM-dd") is compile_format("yyyy-MM-dd")


def test_naive_datetimes_are_formatted_as_utc() -> None:
    assert fmt("yyyy-MM-dd HH:mm Z", INSTANT.replace(tzinfo=None), LA) == "2024-03-05 06:07 -0800"
