"""Keap's API throttling: spike arrest per second, a per-minute throttle and a daily quota.

Keap (Apigee) limits an OAuth application to 25 calls/s (spike arrest, not reported in headers),
1500 calls/minute (``x-keap-product-throttle-*``) and 150,000/day resetting at 00:00 UTC
(``x-keap-product-quota-*``). We count per (client_id, account) — the identity an access token
binds to — so refreshing a token does not reset the counters. Rejected calls are not counted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Decision", "Throttle"]

_DAY = 86_400.0


@dataclass(slots=True)
class _Counters:
    tokens: float  # spike-arrest bucket
    refilled_at: float
    minute_start: float
    minute_used: int
    day_start: float
    day_used: int


@dataclass(frozen=True, slots=True)
class Decision:
    """Outcome of one call: headers to send, and when rejected, how long to wait."""

    allowed: bool
    headers: dict[str, str]
    retry_after: int = 0


class Throttle:
    """Counters per identity. A limit of 0 disables that limit."""

    def __init__(
        self,
        per_second: float = 25,
        per_minute: int = 1500,
        per_day: int = 150_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.per_second = per_second
        self.per_minute = per_minute
        self.per_day = per_day
        self.clock = clock
        self._counters: dict[tuple[str, str], _Counters] = {}

    def _get(self, key: tuple[str, str], now: float) -> _Counters:
        c = self._counters.get(key)
        if c is None:
            c = _Counters(float(self.per_second), now, now, 0, now - now % _DAY, 0)
            self._counters[key] = c
            return c
        if self.per_second > 0:
            c.tokens = min(
                float(self.per_second), c.tokens + (now - c.refilled_at) * self.per_second
            )
        c.refilled_at = now
        if now - c.minute_start >= 60.0:
            c.minute_start, c.minute_used = now, 0
        if now - c.day_start >= _DAY:
            c.day_start, c.day_used = now - now % _DAY, 0
        return c

    def check(self, key: tuple[str, str], *, force_reject: bool = False) -> Decision:
        """Count one call for ``key`` unless a limit is hit; ``force_reject`` simulates a 429."""
        now = self.clock()
        c = self._get(key, now)
        retry_after = 0
        if force_reject:
            retry_after = 1
        elif self.per_day > 0 and c.day_used >= self.per_day:
            retry_after = math.ceil(c.day_start + _DAY - now)
        elif self.per_minute > 0 and c.minute_used >= self.per_minute:
            retry_after = math.ceil(c.minute_start + 60.0 - now)
        elif self.per_second > 0 and c.tokens < 1.0:
            retry_after = math.ceil((1.0 - c.tokens) / self.per_second)
        if retry_after == 0:
            c.tokens -= 1.0
            c.minute_used += 1
            c.day_used += 1
        return Decision(
            retry_after == 0, self._headers(c), max(retry_after, 1 if retry_after else 0)
        )

    def _headers(self, c: _Counters) -> dict[str, str]:
        minute_limit = self.per_minute
        day_limit = self.per_day
        return {
            "x-keap-product-throttle-limit": str(minute_limit),
            "x-keap-product-throttle-time-unit": "minute",
            "x-keap-product-throttle-interval": "1",
            "x-keap-product-throttle-available": str(max(minute_limit - c.minute_used, 0)),
            "x-keap-product-throttle-used": str(c.minute_used),
            "x-keap-product-quota-limit": str(day_limit),
            "x-keap-product-quota-time-unit": "day",
            "x-keap-product-quota-interval": "1",
            "x-keap-product-quota-available": str(max(day_limit - c.day_used, 0)),
            "x-keap-product-quota-used": str(c.day_used),
            "x-keap-product-quota-expiry-time": str(int((c.day_start + _DAY) * 1000)),
        }
