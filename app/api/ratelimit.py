"""Per-organization API request budget: a token bucket in Redis.

One organization's script hammering the API must not slow everyone else's: each
organization gets ``POLLINATOR_API_REQUESTS_PER_SECOND_PER_ORG`` requests per
second (a burst of one second's worth), shared by every API process because the
bucket lives in Redis. The bucket is read, refilled and spent in one Lua script,
so concurrent requests never spend the same token twice, and the clock is Redis'
own ``TIME``, so API processes with skewed clocks agree.

When Redis does not answer, requests are let through (fail-open): the limiter is
about fairness, not about who may do what - authentication and every bound on
what a tenant may store are enforced in PostgreSQL and do not depend on it - and
failing closed would turn a Redis outage into a total API outage for every
tenant, including the reads they need to see what is wrong. The outage is logged
(once a minute per process) and ``/readyz`` reports Redis down.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app import keys
from app.errors import TooManyRequests
from app.settings import Settings

log = logging.getLogger(__name__)

# KEYS[1] = bucket; ARGV[1] = tokens per second, ARGV[2] = capacity.
# Returns {allowed (0/1), seconds until a token is available (string: Lua truncates numbers)}.
_TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
if now > at then tokens = math.min(capacity, tokens + (now - at) * rate) end
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return {allowed, tostring(wait)}
"""

_WARN_EVERY_S = 60.0
_last_warning = -math.inf


async def take_token(redis: Redis, organization_id: int, per_second: float) -> float | None:
    """Spend one request of the organization's budget; ``None`` if allowed, else seconds to wait.

    Raises :class:`RedisError` when Redis does not answer (the caller decides to fail open).
    """
    capacity = max(1.0, per_second)
    script = redis.register_script(_TOKEN_BUCKET)  # EVALSHA, loading the script when needed
    result: Any = await script(
        keys=[keys.api_rate(organization_id)], args=[repr(per_second), repr(capacity)]
    )
    allowed, wait = int(result[0]), float(result[1])
    return None if allowed else wait


async def check_rate(redis: Redis, organization_id: int, settings: Settings) -> None:
    """Raise :class:`TooManyRequests` when the organization is over its request rate."""
    global _last_warning
    per_second = settings.api_requests_per_second_per_org
    if per_second <= 0:
        return
    try:
        wait = await take_token(redis, organization_id, per_second)
    except (RedisError, OSError) as exc:
        now = time.monotonic()
        if now - _last_warning >= _WARN_EVERY_S:
            _last_warning = now
            log.warning("API rate limit not enforced: Redis unavailable (%s)", exc)
        return
    if wait is not None:
        raise TooManyRequests(
            "organization: more than "
            f"{per_second:g} API requests per second (POLLINATOR_API_REQUESTS_PER_SECOND_PER_ORG)",
            retry_after_s=max(1, math.ceil(wait)),
        )
