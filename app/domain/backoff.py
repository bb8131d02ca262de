"""When to retry a failed delivery (SPEC §5).

Retries follow ``POLLINATOR_DELIVERY_RETRY_SCHEDULE`` (delays in seconds before retries 1..n)
with ±10 % jitter so that deliveries that failed together (a receiver outage) do not all come
back in the same second. A ``Retry-After`` from a 429/503 is honoured when it asks for more
time than the schedule would give, but never extends the number of attempts: when the schedule
is exhausted the delivery is ``failed`` (kept, and replayable through the API).

Pure functions: the caller stores ``next_attempt_at`` in the database and a sweeper enqueues
what is due (long Celery countdowns are unsafe with the Redis broker).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = [
    "JITTER",
    "MAX_RETRY_AFTER_S",
    "next_attempt_delay",
    "parse_retry_after",
    "retry_delay_s",
]

JITTER = 0.10
# A receiver asking for more than a week is misconfigured; waiting that long would only make
# the delivery look lost. The cap keeps it within the retry window.
MAX_RETRY_AFTER_S = 7 * 24 * 3600.0

_DELTA_SECONDS_RE = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def retry_delay_s(
    attempts_made: int,
    schedule: Sequence[float],
    rand: Callable[[], float] = random.random,
) -> float | None:
    """Delay before the next attempt after ``attempts_made`` failed attempts, or ``None``.

    ``attempts_made`` is 1-based: after the first failed attempt the delay is ``schedule[0]``.
    The delay is scaled by a factor in ``[0.9, 1.1)`` drawn from ``rand`` (a ``[0, 1)``
    source, injectable for tests). ``None`` means the schedule is exhausted.
    """
    if attempts_made < 1:
        raise ValueError(f"attempts_made must be >= 1, got {attempts_made}")
    if attempts_made > len(schedule):
        return None
    base = float(schedule[attempts_made - 1])
    return max(0.0, base * (1.0 + JITTER * (2.0 * rand() - 1.0)))


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header, or ``None`` when absent or invalid.

    Both RFC 9110 forms are accepted: delta-seconds (``120``; a fraction is tolerated) and an
    HTTP-date (``Wed, 21 Oct 2015 07:28:00 GMT``), taken relative to ``now``. The result is
    never negative (a date in the past means "now") and at most :data:`MAX_RETRY_AFTER_S`.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA_SECONDS_RE.fullmatch(text):
        seconds = float(text)
    else:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            # HTTP dates are always GMT; the obsolete forms may come without a zone.
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def next_attempt_delay(
    attempts_made: int,
    schedule: Sequence[float],
    retry_after_s: float | None,
    rand: Callable[[], float] = random.random,
) -> float | None:
    """Delay before the next attempt, honouring ``Retry-After`` when it is longer.

    ``None`` when the schedule is exhausted, whatever ``Retry-After`` says: the receiver's
    hint changes *when* we retry, not *how often*.
    """
    delay = retry_delay_s(attempts_made, schedule, rand)
    if delay is None:
        return None
    if retry_after_s is not None and retry_after_s > delay:
        return min(retry_after_s, MAX_RETRY_AFTER_S)
    return delay
