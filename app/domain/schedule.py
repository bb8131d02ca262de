"""Poll scheduling arithmetic: phase spreading, drift-free ticks and failure backoff.

Every instance polls on its own grid ``first_poll_at + k * interval``. The grid's phase is
derived from the instance id with Fibonacci hashing, so instances created in the same second
(a bulk import, a load test) are spread evenly over the interval instead of all firing
together, and the spread survives restarts because it is a pure function of the id.

The arithmetic is total: whatever interval or stored time it is given (NaN, infinity,
1e300 seconds, a slot next to ``datetime.max``), a function either returns a datetime
inside ``[SLOT_MIN, SLOT_MAX]`` or raises :class:`ScheduleError` — never ``OverflowError``
and never a loop without end. Validation bounds intervals at the API, but rows can exist
past validation (old rows, manual SQL, a future bug), and the scheduler turns this one
error into quarantining that row instead of failing every tenant's batch.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

__all__ = [
    "FAILURE_BACKOFF_BASE_S",
    "FAILURE_BACKOFF_CAP_S",
    "MIN_FIRST_POLL_DELAY_S",
    "SLOT_MAX",
    "SLOT_MIN",
    "ScheduleError",
    "failure_backoff_s",
    "first_poll_at",
    "latest_tick_at_or_before",
    "next_poll_at",
    "retry_at",
]

# The range of times the scheduler computes and stores: ``datetime``'s own range less a
# day at each end, so a stored slot read back in any session time zone (UTC offsets are
# under 24 h) is still a valid ``datetime``. PostgreSQL's timestamptz reaches far beyond
# (294276 AD, ±infinity); the claim query maps anything outside this range to NULL.
SLOT_MIN = datetime(1, 1, 2, tzinfo=UTC)
SLOT_MAX = datetime(9999, 12, 30, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# No grid step may be longer than the whole range, so k * step stays a small integer.
_MAX_INTERVAL_US = (SLOT_MAX - SLOT_MIN) // _MICROSECOND

# 2**64 / golden ratio, odd: multiplying ids by it and keeping the low 64 bits scatters
# consecutive ids over [0, 2**64) with the three-gap property (Knuth's Fibonacci hashing).
# Integer arithmetic keeps it exact for ids of any size, unlike ``frac(id * 0.618...)``.
_FIBONACCI_MULTIPLIER = 11400714819323198485
_MASK_64 = (1 << 64) - 1
_TWO_TO_64 = float(1 << 64)

# The first poll comes a few seconds after creation, so the API has committed the instance
# and the provider has a moment before the first (empty-ish) poll.
MIN_FIRST_POLL_DELAY_S = 5.0
FAILURE_BACKOFF_BASE_S = 30.0
FAILURE_BACKOFF_CAP_S = 3600.0
# Backoff never grows beyond this many intervals, so fast pollers (tests, 1-minute
# intervals) recover quickly once the provider is back.
_FAILURE_BACKOFF_MAX_INTERVALS = 16.0


class ScheduleError(ValueError):
    """A poll time that cannot be computed: a bad interval, or a slot outside the calendar."""


def _check_interval(interval_s: float) -> None:
    if not (interval_s > 0 and math.isfinite(interval_s)):
        raise ScheduleError(f"interval must be a positive number of seconds, got {interval_s!r}")


def _interval_us(interval_s: float) -> int:
    """The grid step in whole microseconds (``datetime``'s resolution), at least one."""
    _check_interval(interval_s)
    if interval_s * 1e6 > _MAX_INTERVAL_US:
        raise ScheduleError(f"interval of {interval_s:g} s is longer than the calendar")
    return max(1, round(interval_s * 1e6))


def _add_us(start: datetime, offset_us: int, what: str) -> datetime:
    """``start + offset_us``, or :class:`ScheduleError` when that is outside the slot range.

    Differences of aware datetimes never overflow (a ``timedelta`` spans far more than the
    calendar), so the bounds are checked before any datetime is built.
    """
    if offset_us > (SLOT_MAX - start) // _MICROSECOND:
        raise ScheduleError(f"{what} falls after {SLOT_MAX.date().isoformat()}")
    if offset_us < -((start - SLOT_MIN) // _MICROSECOND):
        raise ScheduleError(f"{what} falls before {SLOT_MIN.date().isoformat()}")
    return start + timedelta(microseconds=offset_us)


def _phase_fraction(instance_id: int) -> float:
    return ((instance_id * _FIBONACCI_MULTIPLIER) & _MASK_64) / _TWO_TO_64


def first_poll_at(created_at: datetime, instance_id: int, interval_s: float) -> datetime:
    """When a new instance (or newly added resource) polls first.

    ``created_at`` plus an offset in ``[min(5 s, interval), interval)``, spread by the
    instance's phase: at least a few seconds after creation (the instance row is committed
    and visible to workers), at most one interval — the watermark starts at creation, so
    nothing is lost by waiting, and the instance then keeps this phase forever.
    """
    interval_us = _interval_us(interval_s)
    low_us = min(round(MIN_FIRST_POLL_DELAY_S * 1e6), interval_us)
    offset_us = low_us + int(_phase_fraction(instance_id) * (interval_us - low_us))
    return _add_us(created_at, offset_us, "the first poll")


def next_poll_at(scheduled_at: datetime, interval_s: float, now: datetime) -> datetime:
    """The next tick of the instance's grid strictly after ``now``.

    ``scheduled_at + k * interval`` for the smallest ``k >= 1`` that is later than ``now``:
    computed from the *scheduled* time, not from when the poll ran, so the schedule does not
    drift by the poll's duration; and after downtime an overdue instance polls once and
    resumes its grid instead of catching up every missed tick.

    The grid step is the interval rounded to whole microseconds and ``k`` is exact integer
    arithmetic, so there is no float rounding to correct and no loop. Raises
    :class:`ScheduleError` when the interval is not a positive finite number or that tick
    falls after :data:`SLOT_MAX`.
    """
    step_us = _interval_us(interval_s)
    behind_us = (now - scheduled_at) // _MICROSECOND
    k = 1 if behind_us < 0 else behind_us // step_us + 1
    return _add_us(
        scheduled_at,
        k * step_us,
        f"the next poll ({interval_s:g} s after {scheduled_at.isoformat()})",
    )


def latest_tick_at_or_before(scheduled_at: datetime, interval_s: float, now: datetime) -> datetime:
    """The latest tick of the grid through ``scheduled_at`` that is not after ``now``.

    "Poll now" stores this as the next poll time: the instance is due at once, and when
    beat claims it, :func:`next_poll_at` from this tick is ``scheduled_at`` again (or its
    successor), so the instance keeps its phase instead of re-anchoring its grid at the
    moment of the request. A ``scheduled_at`` already due is returned as it is.
    """
    step_us = _interval_us(interval_s)
    ahead_us = (scheduled_at - now) // _MICROSECOND
    if ahead_us <= 0:
        return scheduled_at
    k = -(-ahead_us // step_us)  # ceil: enough whole steps back to reach now or earlier
    return _add_us(scheduled_at, -k * step_us, "the poll-now tick")


def failure_backoff_s(consecutive_failures: int, interval_s: float) -> float:
    """Seconds from a failed poll to the next attempt.

    ``min(base * 2**(n-1), cap)`` with ``base = min(30 s, interval)`` and
    ``cap = max(interval, min(1 h, 16 * interval))``:

    * the first retries come *sooner* than a long interval, because most failures (5xx,
      timeouts) are transient and the watermark has not moved, so a quick retry shortens
      event latency at the cost of one extra request;
    * repeated failures back off exponentially so a broken instance (revoked grant, provider
      outage) stops spending the shared provider quota;
    * the cap is never below the interval (backing off must not poll *more* often than a
      healthy instance) and never above an hour or 16 intervals, so recovery is noticed
      within that time.
    """
    _check_interval(interval_s)
    if consecutive_failures < 1:
        raise ValueError(f"consecutive_failures must be >= 1, got {consecutive_failures}")
    base = min(FAILURE_BACKOFF_BASE_S, interval_s)
    cap = max(interval_s, min(FAILURE_BACKOFF_CAP_S, _FAILURE_BACKOFF_MAX_INTERVALS * interval_s))
    # The exponent is bounded so huge failure counts cannot overflow the float.
    return min(base * 2.0 ** min(consecutive_failures - 1, 64), cap)


def retry_at(now: datetime, consecutive_failures: int, interval_s: float) -> datetime:
    """When a poll that failed for the ``consecutive_failures``-th time in a row runs again.

    ``now`` plus :func:`failure_backoff_s`; an absurd interval makes that backoff longer
    than the calendar, which is :class:`ScheduleError` rather than ``OverflowError``.
    """
    delay_s = failure_backoff_s(consecutive_failures, interval_s)
    return _add_us(now, max(1, round(delay_s * 1e6)), "the retry after a failed poll")
