"""The watermark: what it is, where it starts, how it is stored, and which copy is believed.

A *watermark* is ``(at, ids)``: the newest effective date known to be complete, plus the
ids already seen at exactly that date (:mod:`app.domain.delta` explains why the ids, and
how a poll moves it). Every rule about the watermark *as a value* lives here:

* **start** — :func:`starting_watermark`: where a resource starts when polling is
  enabled for it;
* **lower bound** — :func:`lower_bound`: the date a poll asks the provider for;
* **order and never backwards** — :func:`position` orders watermarks, and
  :func:`never_backwards` is the rule both stored copies apply on every write (Redis in
  a script, PostgreSQL in the checkpoint ``UPDATE``; :mod:`app.store.watermarks`);
* **codec** — :class:`Encoded`: the one stored form, used by both copies;
* **which copy wins** — :func:`choose`: the Redis copy or the PostgreSQL checkpoint.

Order: a watermark is *ahead* of another when its date is later, or the dates are equal
and it knows more ids (``position = (at, len(ids))``). At equal dates the ids only ever
grow (a poll adds the ids it saw at the date), so the count is enough to order two
copies of one resource's watermark without comparing sets — which keeps the comparison
cheap where it runs (inside Redis and inside PostgreSQL).

Pure and stdlib-only.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from app.domain.pollconfig import ResourceConfig

__all__ = [
    "Encoded",
    "Mirror",
    "Start",
    "Watermark",
    "choose",
    "initial_watermark",
    "lower_bound",
    "never_backwards",
    "position",
    "starting_watermark",
]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _utc(dt: datetime, what: str) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {dt!r}")
    return dt if dt.tzinfo is UTC else dt.astimezone(UTC)


@dataclass(frozen=True)
class Watermark:
    """Newest complete effective date, and the ids already seen at exactly that date.

    For a resource without any date field, ``ids`` is the set of every id seen so far and
    ``at`` the start of the last poll (unused for filtering). ``at`` is normalized to UTC;
    a naive datetime is refused because it would silently shift by the host's zone.
    """

    at: datetime
    ids: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", _utc(self.at, "Watermark.at"))
        if not isinstance(self.ids, frozenset):
            object.__setattr__(self, "ids", frozenset(self.ids))


def initial_watermark(at: datetime) -> Watermark:
    """A watermark at ``at`` with no ids seen yet."""
    return Watermark(at, frozenset())


def starting_watermark(enabled_at: datetime, resource: ResourceConfig) -> datetime:
    """Where a resource's watermark starts when polling is enabled for it.

    Keap renders most dates to the second, so a record written in the same second
    as ``enabled_at`` carries an earlier date than ``enabled_at`` itself; and a
    provider clock that lags (what ``pollDelay`` is for) dates records before our
    clock. Starting at the whole second, less ``pollDelay``, reports those records
    (at worst a few changes from just before enabling) instead of missing them.
    """
    return enabled_at.replace(microsecond=0) - timedelta(seconds=resource.poll_delay)


def lower_bound(watermark: Watermark, cfg: ResourceConfig) -> datetime:
    """The date the URL template is rendered with: ``watermark.at - pollDelay``."""
    if not cfg.poll_delay:
        return watermark.at
    return watermark.at - timedelta(seconds=cfg.poll_delay)


# --- order ---------------------------------------------------------------------------------


def micros(at: datetime) -> int:
    """``at`` as whole microseconds since the epoch (exact: datetimes are microseconds)."""
    return (_utc(at, "at") - EPOCH) // _MICROSECOND


def position(watermark: Watermark) -> tuple[int, int]:
    """Where a watermark stands: (``at`` in microseconds, number of ids). Larger is ahead."""
    return micros(watermark.at), len(watermark.ids)


def never_backwards(current: Watermark | None, new: Watermark) -> Watermark:
    """What a copy holds after ``new`` is written over ``current``: a write never moves it
    back, and an equal one changes nothing. (Only a rewind moves a watermark back, and it
    says so: :attr:`Mirror.RESET`.)"""
    if current is None or position(new) > position(current):
        return new
    return current


# --- codec ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Encoded:
    """A watermark in its stored form, the same for both copies.

    ``at_us`` is ``at`` in microseconds since the epoch, ``count`` the number of ids, and
    ``ids_json`` the ids as canonical JSON (a sorted array, no spaces). The PostgreSQL
    checkpoint stores ``ids_json`` in ``watermark_ids`` (jsonb) beside ``watermark_at``; the
    Redis copy is the single string ``"<at_us>:<count>:<ids_json>"`` (:meth:`to_redis`),
    whose header a Redis script can order without decoding the ids.
    """

    at_us: int
    count: int
    ids_json: str

    @classmethod
    def of(cls, watermark: Watermark) -> Encoded:
        ids = sorted(watermark.ids)
        return cls(micros(watermark.at), len(ids), json.dumps(ids, separators=(",", ":")))

    @property
    def position(self) -> tuple[int, int]:
        return self.at_us, self.count

    @property
    def at(self) -> datetime:
        return EPOCH + self.at_us * _MICROSECOND

    def decode(self) -> Watermark:
        return Watermark(self.at, decode_ids(self.ids_json))

    def to_redis(self) -> str:
        return f"{self.at_us}:{self.count}:{self.ids_json}"

    @classmethod
    def from_redis(cls, raw: bytes | str | None) -> Encoded | None:
        """The Redis copy's value, or ``None`` when there is none or it is not in this form
        (a value written by an older version, or damaged): the copy counts as lost."""
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else raw
        parts = text.split(":", 2)
        if len(parts) != 3:
            return None
        at_us, count, ids_json = parts
        try:
            return cls(int(at_us), int(count), ids_json)
        except ValueError:
            return None


def decode_ids(ids_json: str) -> frozenset[str]:
    """The ids of a stored watermark (``watermark_ids`` as text, or a Redis copy's tail).

    Not validated: both copies are written only through :class:`Encoded` (and this runs
    for every resource of every poll)."""
    return frozenset(json.loads(ids_json))


# --- which copy wins -----------------------------------------------------------------------


class Mirror(enum.Enum):
    """What the Redis copy needs after a poll, besides following a watermark that moved."""

    KEEP = "keep"  # it was current: write it only if the watermark moves
    REBUILD = "rebuild"  # lost, unreadable or behind the checkpoint: write it, never backwards
    RESET = "reset"  # the checkpoint was rewound: overwrite it, even if it is ahead


@dataclass(frozen=True)
class Start:
    """The watermark a poll starts from, and what its Redis copy needs afterwards."""

    watermark: Watermark
    mirror: Mirror


def choose(checkpoint: Watermark, hot: Encoded | None, *, rewound: bool) -> Start:
    """Which copy a poll starts from: the Redis copy (``hot``) or the PostgreSQL checkpoint.

    The copy that is ahead wins — neither is ever moved back, so the one ahead has seen
    more — and the checkpoint wins a tie (it is already decoded). After a rewind, until
    the next poll, the checkpoint wins whatever Redis holds: a rewind moves the watermark
    back on purpose, and a poll that ended just before it may have written Redis late.
    A Redis copy that is lost or behind is rebuilt from the checkpoint.
    """
    if rewound:
        return Start(checkpoint, Mirror.RESET)
    if hot is None:
        return Start(checkpoint, Mirror.REBUILD)
    ahead = hot.position
    mark = position(checkpoint)
    if ahead > mark:
        return Start(hot.decode(), Mirror.KEEP)
    return Start(checkpoint, Mirror.REBUILD if ahead < mark else Mirror.KEEP)
