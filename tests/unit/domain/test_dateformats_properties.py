"""format → parse round trips over generated patterns, instants and zones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from app.domain.dateformats import compile_format
from app.domain.limits import MAX_DATE_FORMAT_LENGTH

ZONES: list[tzinfo] = [
    UTC,
    timezone(timedelta(hours=-8)),
    timezone(timedelta(hours=5, minutes=30)),
    timezone(timedelta(hours=-3, minutes=-30)),
    ZoneInfo("America/Los_Angeles"),
    ZoneInfo("America/New_York"),
    ZoneInfo("Europe/London"),
    ZoneInfo("Europe/Dublin"),
    ZoneInfo("Asia/Kolkata"),
    ZoneInfo("Asia/Kathmandu"),
    ZoneInfo("Australia/Sydney"),
    ZoneInfo("Pacific/Chatham"),
    ZoneInfo("Asia/Manila"),
]

# Separators always contain a non-letter or are quoted, so neighbouring fields never abut.
SEPARATORS = [" ", "-", "/", ":", ".", ", ", "_", "'T'", " 'at' ", "''", "' o''clock '", "|"]

instants = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2100, 12, 31), timezones=st.just(UTC)
)


@st.composite
def patterns(draw: st.DrawFn) -> tuple[str, timedelta]:
    """A pattern with every field needed to pin the instant, and its precision."""
    hour = draw(
        st.sampled_from([["HH"], ["H"], ["kk"], ["hh", "a"], ["h", "a"], ["KK", "a"], ["K", "a"]])
    )
    fraction, precision = draw(
        st.sampled_from(
            [
                (["SSS"], timedelta(milliseconds=1)),
                (["SSSSSS"], timedelta(microseconds=1)),
                ([], timedelta(seconds=1)),
            ]
        )
    )
    tokens = [
        "yyyy",
        draw(st.sampled_from(["MM", "M", "MMM", "MMMM"])),
        draw(st.sampled_from(["dd", "d"])),
        *hour,
        draw(st.sampled_from(["mm", "m"])),
        draw(st.sampled_from(["ss", "s"])),
        *fraction,
        draw(st.sampled_from(["Z", "X", "XX", "XXX", "z"])),
        *draw(st.sampled_from([[], ["EEE"], ["EEEE"]])),
    ]
    ordered = draw(st.permutations(tokens))
    pieces = [draw(st.sampled_from(SEPARATORS)) for _ in ordered]
    pattern = "".join(piece + token for piece, token in zip(pieces, ordered, strict=True)) + draw(
        st.sampled_from(["", *SEPARATORS])
    )
    # Long separators can push a pattern past the bound on what a tenant may configure.
    assume(len(pattern) <= MAX_DATE_FORMAT_LENGTH)
    return pattern, precision


def _truncate(dt: datetime, precision: timedelta) -> datetime:
    return dt - (dt - datetime(1970, 1, 1, tzinfo=UTC)) % precision


@settings(max_examples=400, deadline=None)
@given(patterns(), instants, st.sampled_from(ZONES), st.sampled_from(ZONES))
def test_format_then_parse_round_trips(
    pattern_and_precision: tuple[str, timedelta],
    instant: datetime,
    zone: tzinfo,
    other_zone: tzinfo,
) -> None:
    pattern, precision = pattern_and_precision
    date_format = compile_format(pattern)
    text = date_format.format(instant, zone)
    # The offset inside the text decides; the default zone must not matter.
    assert date_format.parse(text, other_zone) == _truncate(instant, precision), text


@settings(max_examples=200, deadline=None)
@given(instants, st.sampled_from(["milliseconds", "seconds"]))
def test_epoch_round_trips(instant: datetime, pattern: str) -> None:
    date_format = compile_format(pattern)
    precision = timedelta(milliseconds=1) if pattern == "milliseconds" else timedelta(seconds=1)
    parsed = date_format.parse(date_format.format(instant, UTC), UTC)
    assert parsed == _truncate(instant, precision)


@settings(max_examples=200, deadline=None)
@given(instants, st.sampled_from(ZONES))
def test_zone_free_patterns_round_trip_through_the_same_zone(
    instant: datetime, zone: tzinfo
) -> None:
    # Without an offset in the text only the configured zone can place the wall time; it is
    # exact except inside a DST fold, where the earlier instant is chosen.
    date_format = compile_format("yyyy-MM-dd HH:mm:ss.SSS")
    parsed = date_format.parse(date_format.format(instant, zone), zone)
    expected = _truncate(instant, timedelta(milliseconds=1))
    assert parsed == expected or timedelta(0) < expected - parsed <= timedelta(hours=1)
