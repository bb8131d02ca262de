"""The watermark's rules: start, lower bound, order, stored form, which copy wins."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.watermark import (
    Encoded,
    Mirror,
    Start,
    Watermark,
    choose,
    decode_ids,
    lower_bound,
    never_backwards,
    position,
    starting_watermark,
)
from tests.unit.engine.helpers import T0, resource

S = timedelta(seconds=1)


def wm(at: datetime, *ids: str) -> Watermark:
    return Watermark(at, frozenset(ids))


def hot(watermark: Watermark) -> Encoded:
    return Encoded.of(watermark)


# --- start and lower bound ---------------------------------------------------------------


def test_start_is_the_whole_second_less_the_poll_delay() -> None:
    enabled = T0 + timedelta(milliseconds=750)
    assert starting_watermark(enabled, resource()) == T0
    delayed = resource(pollDelay=30)
    assert starting_watermark(enabled, delayed) == T0 - 30 * S
    assert lower_bound(wm(T0), delayed) == T0 - 30 * S
    assert lower_bound(wm(T0), resource()) == T0


def test_watermark_normalizes_to_utc_and_refuses_naive() -> None:
    plus_two = timezone(timedelta(hours=2))
    shifted = Watermark(datetime(2026, 11, 27, 12, 0, tzinfo=plus_two), frozenset())
    assert shifted.at == T0
    assert shifted.at.tzinfo is UTC
    with pytest.raises(ValueError, match="timezone-aware"):
        Watermark(datetime(2026, 11, 27))


# --- order: never backwards --------------------------------------------------------------


def test_a_later_date_or_more_ids_at_the_same_date_is_ahead() -> None:
    assert position(wm(T0 + S)) > position(wm(T0, "1", "2"))
    assert position(wm(T0, "1", "2")) > position(wm(T0, "1"))
    assert never_backwards(wm(T0 + S), wm(T0, "1")) == wm(T0 + S)
    assert never_backwards(wm(T0, "1"), wm(T0, "1", "2")) == wm(T0, "1", "2")
    assert never_backwards(None, wm(T0)) == wm(T0)


def test_an_equal_write_changes_nothing() -> None:
    current = wm(T0, "1")
    assert never_backwards(current, wm(T0, "2")) is current


# --- stored form -------------------------------------------------------------------------


def test_the_stored_form_is_pinned() -> None:
    """Both copies and every running version read it: changing it needs a migration."""
    encoded = Encoded.of(wm(T0 + timedelta(microseconds=123456), "b", "a", "10"))
    assert encoded.ids_json == '["10","a","b"]'
    assert encoded.to_redis() == '1795773600123456:3:["10","a","b"]'
    assert encoded.position == (1795773600123456, 3)


def test_the_stored_form_round_trips() -> None:
    original = wm(T0 + timedelta(microseconds=1), "x", "y")
    assert Encoded.from_redis(Encoded.of(original).to_redis().encode()) == Encoded.of(original)
    stored = Encoded.from_redis(Encoded.of(original).to_redis())
    assert stored is not None
    assert stored.decode() == original
    assert stored.at == original.at


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        # what versions before this one wrote to Redis: read as lost, rebuilt from PostgreSQL
        b'{"at": "2026-11-27T10:00:00.000000+00:00", "ids": ["1"]}',
        b"soon:1:[]",
        b"123:[]",
    ],
)
def test_a_value_not_in_the_stored_form_is_a_lost_copy(raw: bytes | None) -> None:
    assert Encoded.from_redis(raw) is None


def test_checkpoint_ids_read_as_postgresql_prints_them() -> None:
    assert decode_ids('["10", "a"]') == frozenset({"10", "a"})  # jsonb's text has spaces
    assert decode_ids("[]") == frozenset()


@settings(deadline=None, max_examples=200)
@given(
    st.datetimes(
        min_value=datetime(1970, 1, 1), max_value=datetime(9999, 1, 1), timezones=st.just(UTC)
    ),
    st.frozensets(st.text(max_size=5), max_size=5),
)
def test_any_watermark_survives_the_stored_form(at: datetime, ids: frozenset[str]) -> None:
    original = Watermark(at, ids)
    stored = Encoded.from_redis(Encoded.of(original).to_redis())
    assert stored is not None
    assert stored.decode() == original
    assert stored.position == position(original)


# --- which copy wins ---------------------------------------------------------------------


def test_redis_ahead_of_the_checkpoint_wins() -> None:
    assert choose(wm(T0), hot(wm(T0 + S, "1")), rewound=False) == Start(
        wm(T0 + S, "1"), Mirror.KEEP
    )
    assert choose(wm(T0, "1"), hot(wm(T0, "1", "2")), rewound=False) == Start(
        wm(T0, "1", "2"), Mirror.KEEP
    )


def test_redis_behind_the_checkpoint_loses_and_is_rebuilt() -> None:
    checkpoint = wm(T0 + S, "1")
    assert choose(checkpoint, hot(wm(T0)), rewound=False) == Start(checkpoint, Mirror.REBUILD)
    assert choose(checkpoint, hot(wm(T0 + S)), rewound=False) == Start(checkpoint, Mirror.REBUILD)


def test_lost_redis_is_rebuilt_from_the_checkpoint() -> None:
    assert choose(wm(T0), None, rewound=False) == Start(wm(T0), Mirror.REBUILD)


def test_equal_copies_need_nothing() -> None:
    assert choose(wm(T0, "1"), hot(wm(T0, "1")), rewound=False) == Start(wm(T0, "1"), Mirror.KEEP)


def test_a_rewound_checkpoint_wins_over_redis_ahead_and_resets_it() -> None:
    rewound = wm(T0 - 3600 * S)
    for copy in (hot(wm(T0, "1")), None):
        assert choose(rewound, copy, rewound=True) == Start(rewound, Mirror.RESET)
