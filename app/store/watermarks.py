"""The watermark's two copies, and the only code that reads or writes either of them.

See :class:`WatermarkStore` for the truth model. The rules applied here (order, never
backwards, stored form, which copy wins) are :mod:`app.domain.watermark`; this module
applies them atomically where each copy lives: in a Redis script, and in the guard of
the checkpoint ``UPDATE``.

It lives with the stores although it talks to Redis as well as PostgreSQL: it holds no
decision of its own, and its PostgreSQL statements follow the store rule (they take a
connection and never commit; the caller's transaction is the one that also writes the
events the checkpoint covers).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from redis.asyncio import Redis

from app import keys
from app.domain.watermark import Encoded, Mirror, Start, Watermark, choose
from app.store import Conn

# Polls' results per resource, in one statement (arrays, ``unnest``; several instances
# when the quiet polls of a batch write together, ``ANY($1)`` keeping it on the key): the
# watermark moves only forward — ahead means a later date, or the same date with more ids
# (:func:`app.domain.watermark.position`) — and a failed resource (no watermark) keeps its
# own. The rest of the row is the resource's poll status.
_CHECKPOINT = """
    UPDATE poll_states AS p SET
        last_polled_at = u.polled_at,
        watermark_at = CASE WHEN u.wm_at > p.watermark_at OR (u.wm_at = p.watermark_at
                            AND u.wm_count > jsonb_array_length(p.watermark_ids))
                       THEN u.wm_at ELSE p.watermark_at END,
        watermark_ids = CASE WHEN u.wm_at > p.watermark_at OR (u.wm_at = p.watermark_at
                             AND u.wm_count > jsonb_array_length(p.watermark_ids))
                        THEN CAST(u.wm_ids AS jsonb) ELSE p.watermark_ids END,
        last_success_at = CASE WHEN u.ok THEN u.polled_at ELSE p.last_success_at END,
        consecutive_failures = CASE WHEN u.ok THEN 0 ELSE p.consecutive_failures + 1 END,
        last_error = u.err
    FROM unnest($2::bigint[], $3::timestamptz[], $4::text[], $5::boolean[],
                $6::timestamptz[], $7::int[], $8::text[], $9::text[])
         AS u(instance_id, polled_at, resource, ok, wm_at, wm_count, wm_ids, err)
    WHERE p.instance_id = ANY($1::bigint[])
      AND p.instance_id = u.instance_id AND p.resource = u.resource
"""
_CHECKPOINT_AT = "SELECT watermark_at FROM poll_states WHERE instance_id = $1 AND resource = $2"
# The one backwards move: ``rewound_at`` makes the checkpoint win over the Redis copy until
# the next poll, and tells the outbox to emit re-read events again.
_REWIND = """
    UPDATE poll_states SET watermark_at = $3, watermark_ids = '[]'::jsonb, rewound_at = now()
    WHERE instance_id = $1 AND resource = $2
"""

# Per key: ARGV holds (mode, at_us, count, value). 'max' writes only a value ahead of the
# current one (or over a missing or unreadable one); 'set' overwrites (a rewound
# checkpoint). Lua numbers are doubles: microsecond dates are exact until the year 2255.
_MIRROR = """
local written = 0
for i, key in ipairs(KEYS) do
  local base = 4 * (i - 1)
  local value = ARGV[base + 4]
  local write = ARGV[base + 1] == 'set'
  if not write then
    local current = redis.call('GET', key)
    local at, count
    if current then at, count = string.match(current, '^(%-?%d+):(%d+):') end
    if not at then
      write = true
    else
      local new_at, new_count = tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
      at, count = tonumber(at), tonumber(count)
      write = new_at > at or (new_at == at and new_count > count)
    end
  end
  if write then
    redis.call('SET', key, value)
    written = written + 1
  end
end
return written
"""


@dataclass(frozen=True)
class CheckpointWrite:
    """What one poll writes for one resource: its new watermark (``None``: the resource
    failed and keeps its watermark) and its error or warning (shown as ``lastError``)."""

    resource: str
    watermark: Watermark | None
    error: str | None


class CheckpointRow(Protocol):
    """One resource's checkpoint as the poll's snapshot read it."""

    @property
    def resource(self) -> str: ...
    @property
    def checkpoint(self) -> Watermark: ...
    @property
    def rewound(self) -> bool:
        """Rewound and not polled since."""
        ...


class WatermarkStore:
    """Where each resource's watermark is kept, and the only user of its Redis keys.

    Truth model. The hot path computes deltas against the watermark held in Redis
    (:meth:`starts`). PostgreSQL holds the durable checkpoint (``poll_states.watermark_at``
    and ``watermark_ids``), written by :func:`write_checkpoints` in the same transaction
    as the events it covers; Redis is rebuilt from it when the Redis copy is lost,
    unreadable or behind. Both copies only move forward, atomically: Redis through one
    script (:meth:`mirror`), the checkpoint through the guard of its ``UPDATE``. Which copy
    a poll starts from is :func:`app.domain.watermark.choose`: the one ahead, except after
    a rewind, when the checkpoint wins until the next poll.

    Order of one poll (:mod:`app.services.polling`), all under the instance's poll lease:
    read both copies, poll, commit the events with the checkpoint, then :meth:`mirror` the
    committed watermarks into Redis. A poll that dies before the commit moved neither copy;
    one that dies after it left Redis behind, which the next poll sees and repairs.

    The only backwards move is :meth:`rewind` (``POST …/polling/rewind``), completed by
    the next poll (:attr:`Mirror.RESET`). Deleting an instance, dropping a resource or
    erasing an organization drops the Redis copies with :meth:`forget` (the checkpoints go
    with their ``poll_states`` rows).
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._mirror = redis.register_script(_MIRROR)

    async def starts(self, instance_id: int, rows: Sequence[CheckpointRow]) -> dict[str, Start]:
        """Each resource's starting watermark (one Redis round trip for all of them)."""
        return (await self.starts_many([(instance_id, rows)])).get(instance_id, {})

    async def starts_many(
        self, instances: Sequence[tuple[int, Sequence[CheckpointRow]]]
    ) -> dict[int, dict[str, Start]]:
        """:meth:`starts` of several instances (a batch of polls) in one round trip."""
        names = [keys.watermark(i, r.resource) for i, rows in instances for r in rows]
        if not names:
            return {}
        hot = iter(await self.redis.mget(names))
        return {
            instance_id: {
                row.resource: choose(
                    row.checkpoint, Encoded.from_redis(next(hot)), rewound=row.rewound
                )
                for row in rows
            }
            for instance_id, rows in instances
        }

    async def mirror(
        self, instance_id: int, watermarks: Sequence[tuple[str, Watermark, Mirror]]
    ) -> None:
        """Write committed watermarks into Redis in one round trip, never backwards except
        for :attr:`Mirror.RESET` (the first poll after a rewind). Call it after the commit,
        while the poll lease is still held."""
        if not watermarks:
            return
        args: list[str | int] = []
        for _, watermark, how in watermarks:
            encoded = Encoded.of(watermark)
            mode = "set" if how is Mirror.RESET else "max"
            args += [mode, encoded.at_us, encoded.count, encoded.to_redis()]
        await self._mirror(
            keys=[keys.watermark(instance_id, resource) for resource, _, _ in watermarks],
            args=args,
        )

    async def rewind(self, conn: Conn, instance_id: int, resource: str, since: datetime) -> None:
        """Move a resource's watermark back to ``since`` (in the caller's transaction, under
        the instance's poll lock) and drop its Redis copy.

        The Redis copy goes at once, not after the commit: if the transaction then rolls
        back, Redis is merely lost and rebuilt from the (unchanged) checkpoint.
        """
        await conn.execute(_REWIND, instance_id, resource, since)
        await self.redis.delete(keys.watermark(instance_id, resource))

    async def forget(self, instance_id: int, resources: Iterable[str]) -> None:
        """Drop Redis copies whose checkpoints are gone (after that change committed)."""
        await self.forget_all((instance_id, resource) for resource in resources)

    async def forget_all(self, watermarks: Iterable[tuple[int, str]]) -> None:
        """:meth:`forget` for (instance, resource) pairs of several instances."""
        names = [keys.watermark(instance_id, resource) for instance_id, resource in watermarks]
        if names:
            await self.redis.delete(*names)


async def write_checkpoints(
    conn: Conn, instance_id: int, poll_date: datetime, writes: Sequence[CheckpointWrite]
) -> None:
    """A poll's checkpoints and per-resource status, in the transaction of its events."""
    await write_checkpoints_many(conn, [(instance_id, poll_date, writes)])


async def write_checkpoints_many(
    conn: Conn, polls: Sequence[tuple[int, datetime, Sequence[CheckpointWrite]]]
) -> None:
    """:func:`write_checkpoints` of several polls (instance, poll date, writes) in one
    statement: only for polls that store no events (a poll that does writes its own
    checkpoints in the transaction of its events)."""
    rows = [(i, at, w) for i, at, writes in polls for w in writes]
    if not rows:
        return
    encoded = [None if w.watermark is None else Encoded.of(w.watermark) for _, _, w in rows]
    await conn.execute(
        _CHECKPOINT,
        sorted({i for i, _, _ in polls}),
        [i for i, _, _ in rows],
        [at for _, at, _ in rows],
        [w.resource for _, _, w in rows],
        [w.watermark is not None for _, _, w in rows],
        [None if w.watermark is None else w.watermark.at for _, _, w in rows],
        [None if e is None else e.count for e in encoded],
        [None if e is None else e.ids_json for e in encoded],
        [w.error for _, _, w in rows],
    )


async def checkpoint_at(conn: Conn, instance_id: int, resource: str) -> datetime | None:
    """The date of a resource's checkpoint; ``None`` when the instance does not poll it."""
    at: datetime | None = await conn.fetchval(_CHECKPOINT_AT, instance_id, resource)
    return at
