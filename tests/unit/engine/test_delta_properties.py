"""Property tests: polling a changing provider finds every change, and only changes.

The model provider stores records whose dates are rendered to the whole second (as Keap
does, so many records share a date), optionally from a clock that lags ours. Polls read the
records in id-range pages with a ``since`` filter, and more writes happen between page reads
(records updated while a poll is running). The watermark is carried from poll to poll,
sometimes through its JSON form.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.delta import DeltaResult, compute_delta
from app.domain.events import event_id
from app.domain.watermark import Encoded, Watermark, initial_watermark, lower_bound
from tests.support.domain_helpers import merge_deltas
from tests.unit.engine.helpers import T0, keap, resource

N_IDS = 8


@dataclass(frozen=True)
class Op:
    object_id: int
    advance_ms: int


@dataclass(frozen=True)
class Poll:
    gap_ms: int  # time since the previous step: polls are an interval apart
    page_size: int
    # Writes that happen after the poll starts and before each page is read.
    before_page: tuple[tuple[Op, ...], ...]
    per_page_merge: bool
    through_json: bool


ops = st.builds(Op, st.integers(0, N_IDS - 1), st.integers(0, 1500))
polls = st.builds(
    Poll,
    st.integers(0, 5000),
    st.integers(1, N_IDS),
    st.lists(st.lists(ops, max_size=3).map(tuple), max_size=N_IDS).map(tuple),
    st.booleans(),
    st.booleans(),
)
actions = st.lists(st.one_of(ops, polls), max_size=40)


class Provider:
    """Records with second-precision dates from a clock ``lag_ms`` behind ours."""

    def __init__(self, lag_ms: int) -> None:
        self.clock_ms = 0
        self.lag_ms = lag_ms
        self.records: dict[int, tuple[int, int]] = {}  # id -> (updated s, created s)
        self.history: set[tuple[str, int]] = set()  # every (id, updated s) ever written

    def write(self, op: Op) -> None:
        self.clock_ms += op.advance_ms
        date_s = math.floor((self.clock_ms - self.lag_ms) / 1000)
        created_s = self.records[op.object_id][1] if op.object_id in self.records else date_s
        self.records[op.object_id] = (date_s, created_s)
        self.history.add((str(op.object_id), date_s))

    def read(self, ids: range, since_s: float) -> list[dict[str, Any]]:
        return [
            {
                "id": oid,
                "last_updated": keap(T0 + timedelta(seconds=self.records[oid][0])),
                "date_created": keap(T0 + timedelta(seconds=self.records[oid][1])),
            }
            for oid in ids
            if oid in self.records and self.records[oid][0] >= since_s
        ]


def run_poll(
    provider: Provider, poll: Poll, wm: Watermark, poll_delay: int
) -> tuple[DeltaResult, set[tuple[str, int]]]:
    """One poll; returns its delta and the (id, date) states it read."""
    cfg = resource(pollDelay=poll_delay)
    provider.clock_ms += poll.gap_ms
    started = T0 + timedelta(milliseconds=provider.clock_ms)
    since_s = (lower_bound(wm, cfg) - T0).total_seconds()
    pages: list[list[dict[str, Any]]] = []
    for index, start in enumerate(range(0, N_IDS, poll.page_size)):
        for op in poll.before_page[index] if index < len(poll.before_page) else ():
            provider.write(op)
        pages.append(provider.read(range(start, start + poll.page_size), since_s))
    read = {(str(r["id"]), provider_seconds(r["last_updated"])) for page in pages for r in page}
    if poll.per_page_merge:
        delta = merge_deltas([compute_delta(page, cfg, wm, started) for page in pages])
    else:
        delta = compute_delta([r for page in pages for r in page], cfg, wm, started)
    return delta, read


def provider_seconds(rendered: str) -> int:
    from datetime import datetime

    return int((datetime.strptime(rendered, "%Y-%m-%dT%H:%M:%S.%f%z") - T0).total_seconds())


@settings(max_examples=300, deadline=None)
@given(actions, st.integers(0, 3), st.integers(0, 3))
def test_every_observed_change_is_reported_and_nothing_else(
    steps: list[Op | Poll], lag_s: int, extra_delay_s: int
) -> None:
    provider = Provider(lag_ms=lag_s * 1000)
    poll_delay = lag_s + extra_delay_s  # pollDelay covers the provider's clock lag
    wm = initial_watermark(T0)
    reported: Counter[tuple[str, int]] = Counter()
    # The cap (poll start - pollDelay, in seconds) of the poll that last reported each state.
    last_cap: dict[tuple[str, int], float] = {}
    observed: set[tuple[str, int]] = set()
    # A quiet final poll, long after the last write: it must see every last state.
    final = Poll((poll_delay + 1) * 1000, N_IDS, (), per_page_merge=False, through_json=False)

    for step in [*steps, final]:
        if isinstance(step, Op):
            provider.write(step)
            continue
        cap_s = (provider.clock_ms + step.gap_ms) / 1000 - poll_delay
        delta, read = run_poll(provider, step, wm, poll_delay)
        observed |= read
        for change in delta.changes:
            date_s = int((change.date - T0).total_seconds())
            key = (change.object_id, date_s)
            # Reported again only if it was newer than the cap of the poll that reported it
            # (written while that poll ran, or within pollDelay of its start).
            assert key not in last_cap or date_s > last_cap[key], key
            reported[key] += 1
            last_cap[key] = cap_s
            created_s = provider_seconds(change.record["date_created"])
            if created_s == date_s:
                assert change.event_type == "CREATED"
        assert delta.watermark.at >= wm.at
        assert delta.watermark.at <= T0 + timedelta(milliseconds=provider.clock_ms)
        wm = delta.watermark
        if step.through_json:  # stored and read back between polls
            stored = Encoded.from_redis(Encoded.of(wm).to_redis())
            assert stored is not None
            wm = stored.decode()

    # No miss: every state any poll saw, dated at or after enabling, was reported; the final
    # quiet poll saw every record's last state.
    must_report = {(oid, d) for oid, d in observed if d >= 0}
    assert must_report <= set(reported)
    # Nothing invented: every report is a real state after enabling.
    assert set(reported) <= {(oid, d) for oid, d in provider.history if d >= 0}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 20), st.integers(-3, 6)), max_size=30),
    st.integers(0, 6),
    st.frozensets(st.integers(0, 20).map(str), max_size=5),
    st.lists(st.integers(1, 10), min_size=1, max_size=5),
)
def test_per_page_merge_equals_one_delta(
    items: list[tuple[int, int]], start_s: int, seen: frozenset[str], cuts: list[int]
) -> None:
    cfg = resource(created=None)
    records = [{"id": oid, "last_updated": keap(T0 + timedelta(seconds=s))} for oid, s in items]
    wm = Watermark(T0, seen)
    started = T0 + timedelta(seconds=start_s)
    pages: list[list[dict[str, Any]]] = []
    rest = records
    for cut in cuts:
        pages.append(rest[:cut])
        rest = rest[cut:]
    pages.append(rest)
    whole = compute_delta(records, cfg, wm, started)
    merged = merge_deltas([compute_delta(page, cfg, wm, started) for page in pages])
    assert merged.watermark == whole.watermark
    assert {(c.object_id, c.date) for c in merged.changes} == {
        (c.object_id, c.date) for c in whole.changes
    }


@given(st.integers(0, 10**9), st.text(max_size=20), st.integers(0, 10**12))
def test_event_ids_are_stable_across_representations(
    instance_id: int, object_id: str, micros: int
) -> None:
    date = T0 + timedelta(microseconds=micros)
    first = event_id(instance_id, "contacts", object_id, date)
    from datetime import timezone

    elsewhere = date.astimezone(timezone(timedelta(hours=-8)))
    assert event_id(instance_id, "contacts", object_id, elsewhere) == first
    assert event_id(instance_id, "contacts", object_id, date + timedelta(microseconds=1)) != first
