"""The settle phase's test: has the schedule caught up after the instances were created?"""

from __future__ import annotations

from app.loadtest.analysis import JournalEntry
from app.loadtest.drive import SETTLE_LAG_S, SETTLE_WINDOW_S, settled
from tests.unit.loadtest.test_analysis import entry

NOW = 1_000.0


def polls(lag: float, count: int = 200, end: float = NOW) -> list[JournalEntry]:
    step = SETTLE_WINDOW_S / count
    return [
        entry(i, end - i * step - lag, end - i * step, end - i * step + 0.2) for i in range(count)
    ]


def test_on_time_polls_in_the_window_have_settled() -> None:
    assert settled(polls(0.3), NOW)


def test_a_backlog_in_the_window_has_not_settled() -> None:
    late = polls(0.3)
    late[:5] = polls(SETTLE_LAG_S * 5, count=5)  # 2.5 % of the window late: above p99
    assert not settled(late, NOW)


def test_only_the_window_counts() -> None:
    # The backlog drained before the window began.
    old = polls(15.0, end=NOW - 2 * SETTLE_WINDOW_S)
    assert settled(old + polls(0.3), NOW)


def test_no_polls_yet_has_not_settled() -> None:
    assert not settled([], NOW)
    assert not settled(polls(0.3, end=NOW - 3 * SETTLE_WINDOW_S), NOW)
