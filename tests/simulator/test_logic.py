"""Pure logic of the simulator: dates, store queries, throttle, OAuth state."""

from __future__ import annotations

import random

import pytest

from app.simulator.dates import DateParseError, iso_ms_z, parse_iso_ms, render_keap
from app.simulator.listing import parse_list_query
from app.simulator.oauth import OAuthError, OAuthState
from app.simulator.store import INDEX_THRESHOLD, QueryError, Store
from app.simulator.throttle import Throttle

MS = 1_717_453_079_039  # 2024-06-03T22:17:59.039Z


def test_render_keap_truncates_to_the_second() -> None:
    assert render_keap(MS) == "2024-06-03T22:17:59.000+0000"
    assert iso_ms_z(MS) == "2024-06-03T22:17:59.039Z"


@pytest.mark.parametrize(
    "text",
    [
        "2024-06-03T22:17:59.039Z",
        "2024-06-03T22:17:59.039+0000",
        "2024-06-03T22:17:59.039+00:00",
        "2024-06-03T23:17:59.039+01:00",
        "2024-06-03T22:17:59.039999Z",
    ],
)
def test_parse_iso_ms(text: str) -> None:
    assert parse_iso_ms(text) == MS


def test_parse_iso_rejects_garbage() -> None:
    with pytest.raises(DateParseError):
        parse_iso_ms("yesterday")


def test_list_query_clamps_limit_and_validates() -> None:
    p = parse_list_query({"limit": "5000", "order_direction": "descending"})
    assert p.limit == 1000
    assert p.descending
    assert parse_list_query({}).limit == 1000
    for bad in ({"limit": "0"}, {"offset": "-1"}, {"since": "x"}, {"order_direction": "up"}):
        with pytest.raises(QueryError):
            parse_list_query(bad)


def _walk(store: Store, resource: str, limit: int, **kw: object) -> list[int]:
    seen: list[int] = []
    offset = 0
    while True:
        page = store.query("a", resource, offset=offset, limit=limit, **kw)  # type: ignore[arg-type]
        if not page.records:
            return seen
        seen += [r["id"] for r in page.records]
        offset += limit


@pytest.mark.parametrize(
    ("order", "descending"),
    [("id", False), ("id", True), ("date_created", False), ("name", True), ("email", False)],
)
def test_pagination_walks_every_record_once(order: str, descending: bool) -> None:
    store = Store(seed=1)
    store.seed_account("a", 101, MS, ["contacts"])
    ids = _walk(store, "contacts", 7, order=order, descending=descending)
    assert sorted(ids) == list(range(1, 102))
    assert len(ids) == len(set(ids))


def test_unknown_order_is_rejected() -> None:
    store = Store(seed=1)
    store.seed_account("a", 3, MS, ["orders"])
    with pytest.raises(QueryError):
        store.query("a", "orders", order="name")


@pytest.mark.parametrize("n", [50, INDEX_THRESHOLD + 500])
def test_since_filter_matches_a_scan_with_and_without_index(n: int) -> None:
    store = Store(seed=2)
    store.seed_account("a", n, MS, ["contacts"])
    rng = random.Random(3)
    table = store.accounts["a"].tables["contacts"]
    for _ in range(3):  # queries build the index; writes must keep it in sync
        for rid in rng.sample(range(1, n + 1), 20):
            store.update("a", "contacts", rid, MS + rng.randrange(10_000))
        store.create("a", "contacts", MS + rng.randrange(10_000))
        store.delete("a", "contacts", int(table.ids[rng.randrange(len(table))]), MS)
        since = MS - 86_400_000 * 5
        until = MS + 5_000
        expected = sorted(
            int(i) for i, u in zip(table.ids, table.updated, strict=True) if since <= u < until
        )
        page = store.query("a", "contacts", since=since, until=until, limit=1000)
        assert page.count == len(expected)
        assert [r["id"] for r in page.records] == expected[:1000]


def test_throttle_spike_minute_and_headers() -> None:
    now = [1000.0]
    t = Throttle(per_second=2, per_minute=3, per_day=100, clock=lambda: now[0])
    key = ("cid", "acct")
    assert t.check(key).allowed
    assert t.check(key).allowed
    d = t.check(key)
    assert not d.allowed
    assert d.retry_after == 1
    now[0] += 1.0
    d = t.check(key)
    assert d.allowed
    assert d.headers["x-keap-product-throttle-used"] == "3"
    assert d.headers["x-keap-product-throttle-available"] == "0"
    now[0] += 1.0
    d = t.check(key)
    assert not d.allowed  # per-minute exhausted
    assert 50 <= d.retry_after <= 60
    assert t.check(("cid", "other")).allowed  # limits are per identity


def test_oauth_code_single_use_and_refresh_rotation() -> None:
    now = [0.0]
    o = OAuthState(token_ttl=10, clock=lambda: now[0])
    code = o.authorize("c", "https://x/cb", "acct")
    tokens = o.exchange_code("c", "s", code, "https://x/cb")
    with pytest.raises(OAuthError) as e:
        o.exchange_code("c", "s", code, "https://x/cb")
    assert e.value.error == "invalid_grant"
    with pytest.raises(OAuthError) as e:
        o.refresh("c", "wrong", tokens.refresh_token)
    assert (e.value.status, e.value.error) == (401, "invalid_client")
    new = o.refresh("c", "s", tokens.refresh_token)
    with pytest.raises(OAuthError):
        o.refresh("c", "s", tokens.refresh_token)
    grant = o.lookup(new.access_token)
    assert grant is not None
    assert grant.account == "acct"
    now[0] = 11.0
    assert o.is_expired(grant)
