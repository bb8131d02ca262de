"""Poll scheduling arithmetic: phase spreading, drift-free ticks and failure backoff.

Every instance polls on its own grid ``first_poll_at + k * interval``. The grid's phase is
derived from the instance id with Fibonacci hashing, so instances created in the same second
(a bulk import, a load test) are spread evenly over the interval instead of all firing
together, and the spread survives restarts because it is a pure function of the id.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

__all__ = [
    "FAILURE_BACKOFF_BASE_S",
    "FAILURE_BACKOFF_CAP_S",
    "MIN_FIRST_POLL_DELAY_S",
    "failure_backoff_s",
    "first_poll_at",
    "next_poll_at",
    "phase_offset",
]

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


def _check_interval(interval_s: float) -> None:
    if not (interval_s > 0 and math.isfinite(interval_s)):
        raise ValueError(f"interval must be a positive number of seconds, got {interval_s!r}")


def _phase_fraction(instance_id: int) -> float:
    return ((instance_id * _FIBONACCI_MULTIPLIER) & _MASK_64) / _TWO_TO_64


def phase_offset(instance_id: int, interval_s: float) -> float:
    """This instance's offset in ``[0, interval_s)``; consecutive ids land far apart."""
    _check_interval(interval_s)
    return min(_phase_fraction(instance_id) * interval_s, math.nextafter(interval_s, 0.0))


def first_poll_at(created_at: datetime, instance_id: int, interval_s: float) -> datetime:
    """When a new instance (or newly added resource) polls first.

    ``created_at`` plus an offset in ``[min(5 s, interval), interval)``, spread by the
    instance's phase: at least a few seconds after creation (the instance row is committed
    and visible to workers), at most one interval — the watermark starts at creation, so
    nothing is lost by waiting, and the instance then keeps this phase forever.
    """
    _check_interval(interval_s)
    low = min(MIN_FIRST_POLL_DELAY_S, interval_s)
    offset = low + _phase_fraction(instance_id) * (interval_s - low)
    return created_at + timedelta(seconds=offset)


def next_poll_at(scheduled_at: datetime, interval_s: float, now: datetime) -> datetime:
    """The next tick of the instance's grid strictly after ``now``.

    ``scheduled_at + k * interval`` for the smallest ``k >= 1`` that is later than ``now``:
    computed from the *scheduled* time, not from when the poll ran, so the schedule does not
    drift by the poll's duration; and after downtime an overdue instance polls once and
    resumes its grid instead of catching up every missed tick.
    """
    _check_interval(interval_s)
    behind = (now - scheduled_at).total_seconds()
    k = max(1, math.floor(behind / interval_s) + 1)
    candidate = scheduled_at + timedelta(seconds=k * interval_s)
    # Float rounding (and timedelta's microsecond resolution) can land exactly on `now`.
    while candidate <= now:
        k += 1
        candidate = scheduled_at + timedelta(seconds=k * interval_s)
    return candidate


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
