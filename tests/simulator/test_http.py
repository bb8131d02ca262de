"""The simulator over real HTTP: OAuth, REST envelopes, pagination, since, throttle, faults,
admin API and the mutator."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from app.simulator.dates import iso_ms_z
from app.simulator.resources import RESOURCE_NAMES

from .conftest import REDIRECT, authorize, bearer, login, token

Sim = Callable[..., Awaitable[TestClient[Any, Any]]]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    """Wait for ``check`` to hold: timing on a loaded machine is a condition, not a sleep."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"still false after {timeout}s"
        await asyncio.sleep(0.05)


KEAP_DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000\+0000$")
DATE_FIELDS = {
    "contacts": ("date_created", "last_updated"),
    "opportunities": ("date_created", "last_updated"),
    "notes": ("date_created", "last_updated"),
    "files": ("date_created", "last_updated"),
    "orders": ("creation_date", "modification_date", "order_date"),
    "tasks": ("creation_date", "modification_date", "due_date"),
    "transactions": ("transaction_date",),
    "appointments": ("start_date", "end_date"),
    "companies": (),
    "products": (),
}
NO_DATES = {
    "appointments": ("date_created", "last_updated", "creation_date"),
    "transactions": ("last_updated", "modification_date"),
    "companies": ("date_created", "last_updated"),
    "products": ("date_created", "last_updated"),
}


async def _list(
    client: TestClient[Any, Any], tokens: dict[str, Any], resource: str, **params: Any
) -> tuple[int, Any]:
    resp = await client.get(f"/crm/rest/v1/{resource}", params=params, headers=bearer(tokens))
    return resp.status, await resp.json()


# --- OAuth --------------------------------------------------------------------------------------


async def test_oauth_code_is_single_use_and_bound_to_redirect(make_sim: Sim) -> None:
    client = await make_sim()
    code = await authorize(client)
    form = {"grant_type": "authorization_code", "code": code, "client_id": "cid"}
    status, body = await token(client, **form, client_secret="s", redirect_uri=REDIRECT + "x")
    assert (status, body["error"]) == (400, "invalid_grant")  # wrong redirect burns the code
    code = await authorize(client)
    form["code"] = code
    status, body = await token(client, **form, client_secret="s", redirect_uri=REDIRECT)
    assert status == 200
    assert body["token_type"] == "bearer"
    assert body["scope"] == "full"
    assert body["expires_in"] == 86400
    status, body = await token(client, **form, client_secret="s", redirect_uri=REDIRECT)
    assert (status, body["error"]) == (400, "invalid_grant")
    assert body["error_description"]


async def test_oauth_errors(make_sim: Sim) -> None:
    client = await make_sim()
    status, body = await token(client, grant_type="authorization_code", client_id="c")
    assert (status, body["error"]) == (400, "invalid_request")
    status, body = await token(client, client_id="c", client_secret="s")
    assert (status, body["error"]) == (400, "invalid_request")
    code = await authorize(client, client_id="c")
    status, body = await token(
        client, grant_type="authorization_code", code=code, redirect_uri=REDIRECT
    )
    assert (status, body["error"]) == (401, "invalid_client")
    await login(client, client_id="pinned")  # pins secret "secret"
    code = await authorize(client, client_id="pinned")
    status, body = await token(
        client,
        grant_type="authorization_code",
        code=code,
        redirect_uri=REDIRECT,
        client_id="pinned",
        client_secret="other",
    )
    assert (status, body["error"]) == (401, "invalid_client")


async def test_refresh_rotates_with_basic_auth(make_sim: Sim) -> None:
    client = await make_sim()
    tokens = await login(client)
    basic = base64.b64encode(b"cid:secret").decode()
    resp = await client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert resp.status == 200
    new = await resp.json()
    assert new["refresh_token"] != tokens["refresh_token"]
    status, body = await token(
        client,
        grant_type="refresh_token",
        refresh_token=tokens["refresh_token"],
        client_id="cid",
        client_secret="secret",
    )
    assert (status, body["error"]) == (400, "invalid_grant")
    status, _ = await _list(client, new, "contacts")
    assert status == 200


async def test_access_token_expires(make_sim: Sim) -> None:
    client = await make_sim(token_ttl=3.0)  # long enough to use it first on any machine
    tokens = await login(client)
    assert (await _list(client, tokens, "contacts"))[0] == 200

    async def expired() -> bool:
        return (await _list(client, tokens, "contacts"))[0] != 200

    await eventually(expired)
    status, body = await _list(client, tokens, "contacts")
    assert status == 401
    assert body["fault"]["detail"]["errorcode"].startswith("keymanagement.service.")
    status, body = await _list(client, {"access_token": "nope"}, "contacts")
    assert status == 401
    assert body["fault"]["faultstring"] == "Invalid Access Token"


async def test_tokens_bind_to_their_account(make_sim: Sim) -> None:
    client = await make_sim(records_per_account=0)
    a = await login(client, "a")
    b = await login(client, "b")
    await client.post("/_sim/accounts/a/contacts", json={"given_name": "OnlyA"})
    assert (await _list(client, a, "contacts"))[1]["count"] == 1
    assert (await _list(client, b, "contacts"))[1]["count"] == 0
    fresh = await login(client, None)  # a new random account
    accounts = await (await client.get("/_sim/accounts")).json()
    assert len(accounts) == 3
    assert (await _list(client, fresh, "contacts"))[0] == 200


# --- REST --------------------------------------------------------------------------------------


@pytest.mark.parametrize("resource", RESOURCE_NAMES)
async def test_envelope_fields_and_date_format(make_sim: Sim, resource: str) -> None:
    client = await make_sim(records_per_account=30, seed_resources=[resource])
    tokens = await login(client)
    status, body = await _list(client, tokens, resource, limit=10, offset=25)
    assert status == 200
    assert list(body) == [resource, "count", "next", "previous"]
    assert body["count"] == 30
    records = body[resource]
    assert len(records) == 5
    assert body["next"].startswith(str(client.make_url(f"/crm/rest/v1/{resource}/")))
    assert "limit=10&offset=35" in body["next"]
    assert "offset=15" in body["previous"]
    for record in records:
        assert isinstance(record["id"], int)
        for name in DATE_FIELDS[resource]:
            assert KEAP_DATE.match(record[name]), (name, record[name])
        for name in NO_DATES.get(resource, ()):
            assert name not in record
    if resource == "contacts":
        r = records[0]
        assert isinstance(r["last_updated_utc_millis"], int)
        ms = r["last_updated_utc_millis"]
        assert r["last_updated"] == datetime.fromtimestamp(ms // 1000, UTC).strftime(
            "%Y-%m-%dT%H:%M:%S.000+0000"
        )
        assert r["email_addresses"][0]["email"]


async def test_pagination_with_next_walks_every_record_once(make_sim: Sim) -> None:
    client = await make_sim(records_per_account=53, seed_resources=["contacts"])
    tokens = await login(client)
    url: str | None = str(client.make_url("/crm/rest/v1/contacts?limit=10&order=date_created"))
    seen: list[int] = []
    pages = 0
    while url:
        async with client.session.get(url, headers=bearer(tokens)) as resp:
            body = await resp.json()
        assert body["count"] == 53
        assert "next" in body
        pages += 1
        if not body["contacts"]:
            break
        seen += [c["id"] for c in body["contacts"]]
        url = body["next"]
    assert pages == 7  # 6 pages with data + the empty one
    assert sorted(seen) == list(range(1, 54))


async def test_limit_is_clamped_and_bad_params_rejected(make_sim: Sim) -> None:
    client = await make_sim(records_per_account=3, seed_resources=["orders"])
    tokens = await login(client)
    status, body = await _list(client, tokens, "orders", limit=5000)
    assert status == 200
    assert "limit=1000" in body["next"]
    assert (await _list(client, tokens, "orders", since="last week"))[0] == 400
    assert (await _list(client, tokens, "orders", order="bogus"))[0] == 400
    status, body = await _list(client, tokens, "orders", order="ID", order_direction="descending")
    assert [o["id"] for o in body["orders"]] == [3, 2, 1]
    resp = await client.get("/crm/rest/v1/widgets", headers=bearer(tokens))
    assert resp.status == 404
    resp = await client.get("/crm/rest/v1/orders/2", headers=bearer(tokens))
    assert (await resp.json())["id"] == 2


async def test_since_is_millisecond_precise_and_inclusive(make_sim: Sim) -> None:
    client = await make_sim(records_per_account=20)
    tokens = await login(client)
    created = await (await client.post("/_sim/accounts/acme/contacts", json={})).json()
    ms = created["last_updated_utc_millis"]
    for since in (iso_ms_z(ms), iso_ms_z(ms).replace("Z", "+0000")):
        status, body = await _list(client, tokens, "contacts", since=since)
        assert status == 200
        assert [c["id"] for c in body["contacts"]] == [created["id"]]
        assert body["count"] == 1
        assert "since=" in body["next"]
    status, body = await _list(client, tokens, "contacts", since=iso_ms_z(ms + 1))
    assert body["contacts"] == []
    assert body["count"] == 0
    # until is exclusive
    _, body = await _list(client, tokens, "contacts", since=iso_ms_z(ms), until=iso_ms_z(ms))
    assert body["count"] == 0
    _, body = await _list(client, tokens, "contacts", since=iso_ms_z(ms), until=iso_ms_z(ms + 1))
    assert body["count"] == 1


async def test_since_applies_per_keap_resource(make_sim: Sim) -> None:
    client = await make_sim(records_per_account=20)
    tokens = await login(client)
    future = iso_ms_z(int(time.time() * 1000) + 3_600_000)
    for resource in ("opportunities", "notes", "files", "companies", "products"):
        _, body = await _list(client, tokens, resource, since=future)
        assert body["count"] == 2, resource  # ignored: 20 seeded records / 10 resources
    for resource in ("contacts", "orders", "tasks", "appointments", "transactions"):
        _, body = await _list(client, tokens, resource, since=future)
        assert body["count"] == 0, resource
    # an update moves orders (modification_date) but not transactions (transaction_date)
    start = iso_ms_z(int(time.time() * 1000) - 1)
    await client.patch("/_sim/accounts/acme/orders/1", json={"title": "changed"})
    await client.patch("/_sim/accounts/acme/transactions/1", json={"amount": 1.5})
    _, body = await _list(client, tokens, "orders", since=start)
    assert [(o["id"], o["title"]) for o in body["orders"]] == [(1, "changed")]
    _, body = await _list(client, tokens, "transactions", since=start)
    assert body["count"] == 0


async def test_latency_and_clock_skew(make_sim: Sim) -> None:
    client = await make_sim(latency_ms=150, clock_skew_ms=60_000)
    tokens = await login(client)
    t0 = time.monotonic()
    assert (await _list(client, tokens, "contacts"))[0] == 200
    assert time.monotonic() - t0 >= 0.14
    record = await (await client.post("/_sim/accounts/acme/contacts", json={})).json()
    lag = time.time() * 1000 - record["last_updated_utc_millis"]
    assert 59_000 < lag < 62_000


# --- throttling ---------------------------------------------------------------------------------


async def test_throttle_429_with_keap_headers(make_sim: Sim) -> None:
    client = await make_sim(throttle_per_second=3, throttle_per_minute=100)
    tokens = await login(client)
    statuses = []
    for _ in range(4):
        resp = await client.get("/crm/rest/v1/contacts", headers=bearer(tokens))
        statuses.append(resp.status)
        assert resp.headers["x-keap-product-throttle-limit"] == "100"
        assert "x-keap-product-quota-expiry-time" in resp.headers
    assert statuses == [200, 200, 200, 429]
    body = await resp.json()
    assert body["fault"]["detail"]["errorcode"] == "policies.ratelimit.QuotaViolation"
    assert body["fault"]["faultstring"].startswith("Rate limit quota violation")
    assert int(resp.headers["Retry-After"]) >= 1
    assert resp.headers["x-keap-product-throttle-used"] == "3"


async def test_throttle_without_retry_after(make_sim: Sim) -> None:
    client = await make_sim(throttle_per_second=0, throttle_per_minute=1, retry_after=False)
    tokens = await login(client)
    assert (await client.get("/crm/rest/v1/tasks", headers=bearer(tokens))).status == 200
    resp = await client.get("/crm/rest/v1/tasks", headers=bearer(tokens))
    assert resp.status == 429
    assert "Retry-After" not in resp.headers
    assert resp.headers["x-keap-product-throttle-available"] == "0"


# --- faults -------------------------------------------------------------------------------------


async def _fault(client: TestClient[Any, Any], **body: Any) -> None:
    resp = await client.post("/_sim/faults", json=body)
    assert resp.status in (200, 201), await resp.text()


async def test_faults_error500_malformed_throttle(make_sim: Sim) -> None:
    client = await make_sim(records_per_account=5)
    tokens = await login(client)
    other = await login(client, "other")
    await _fault(client, kind="error500", probability=1, seconds=30, account="acme")
    assert (await client.get("/crm/rest/v1/contacts", headers=bearer(tokens))).status == 500
    assert (await client.get("/crm/rest/v1/contacts", headers=bearer(other))).status == 200
    await client.delete("/_sim/faults")
    await _fault(client, kind="malformed", seconds=30)
    resp = await client.get("/crm/rest/v1/contacts", headers=bearer(tokens))
    assert resp.status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(await resp.text())
    await client.delete("/_sim/faults")
    await _fault(client, kind="throttle", seconds=30)
    resp = await client.get("/crm/rest/v1/contacts", headers=bearer(tokens))
    assert resp.status == 429
    assert "x-keap-product-throttle-limit" in resp.headers
    await client.delete("/_sim/faults")
    assert (await client.get("/crm/rest/v1/contacts", headers=bearer(tokens))).status == 200
    resp = await client.post("/_sim/faults", json={"kind": "nope"})
    assert resp.status == 400


async def test_fault_expires_after_seconds_and_probability(make_sim: Sim) -> None:
    client = await make_sim()
    tokens = await login(client)
    await _fault(client, kind="error500", probability=0.5, seconds=60)
    statuses = [
        (await client.get("/crm/rest/v1/contacts", headers=bearer(tokens))).status
        for _ in range(20)
    ]
    assert 0 < statuses.count(500) < 20
    await client.delete("/_sim/faults")
    await _fault(client, kind="error500", probability=1.0, seconds=2)
    assert (await client.get("/crm/rest/v1/contacts", headers=bearer(tokens))).status == 500

    async def expired() -> bool:
        resp = await client.get("/crm/rest/v1/contacts", headers=bearer(tokens))
        return resp.status == 200

    await eventually(expired)


async def test_faults_slow_and_timeout(make_sim: Sim) -> None:
    client = await make_sim(throttle_per_second=0)
    tokens = await login(client)
    await _fault(client, kind="slow", seconds=30, delaySeconds=0.3)
    t0 = time.monotonic()
    assert (await client.get("/crm/rest/v1/contacts", headers=bearer(tokens))).status == 200
    assert time.monotonic() - t0 >= 0.29
    await client.delete("/_sim/faults")
    await _fault(client, kind="timeout", seconds=30)
    with pytest.raises(asyncio.TimeoutError):
        await client.get(
            "/crm/rest/v1/contacts",
            headers=bearer(tokens),
            timeout=aiohttp.ClientTimeout(total=0.3),
        )
    await client.delete("/_sim/faults")
    assert (await client.get("/crm/rest/v1/contacts", headers=bearer(tokens))).status == 200


async def test_fault_expire_tokens(make_sim: Sim) -> None:
    client = await make_sim()
    a = await login(client, "a")
    b = await login(client, "b")
    resp = await client.post("/_sim/faults", json={"kind": "expire_tokens", "account": "a"})
    assert (await resp.json())["expired"] == 1
    assert (await _list(client, a, "contacts"))[0] == 401
    assert (await _list(client, b, "contacts"))[0] == 200
    status, fresh = await token(
        client,
        grant_type="refresh_token",
        refresh_token=a["refresh_token"],
        client_id="cid",
        client_secret="secret",
    )
    assert status == 200
    assert (await _list(client, fresh, "contacts"))[0] == 200


# --- admin API ----------------------------------------------------------------------------------


async def test_change_log_matches_admin_operations(make_sim: Sim) -> None:
    client = await make_sim(records_per_account=10)
    await login(client)
    before = iso_ms_z(int(time.time() * 1000) - 1)
    resp = await client.post("/_sim/accounts/acme/contacts", json={"given_name": "Zed", "id": 99})
    assert resp.status == 201
    created = await resp.json()
    assert created["given_name"] == "Zed"
    assert created["id"] != 99  # ids are assigned, never taken from the body
    await asyncio.sleep(0.01)
    resp = await client.patch(f"/_sim/accounts/acme/contacts/{created['id']}", json={"x": 1})
    updated = await resp.json()
    assert updated["x"] == 1
    assert updated["given_name"] == "Zed"
    assert updated["last_updated_utc_millis"] > created["last_updated_utc_millis"]
    assert (await client.delete("/_sim/accounts/acme/orders/1")).status == 200
    assert (await client.delete("/_sim/accounts/acme/orders/1")).status == 404
    changes = await (
        await client.get("/_sim/accounts/acme/changes", params={"since": before})
    ).json()
    assert [(c["op"], c["resource"], c["id"]) for c in changes] == [
        ("create", "contacts", created["id"]),
        ("update", "contacts", created["id"]),
        ("delete", "orders", 1),
    ]
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", c["at"]) for c in changes)
    later = await (
        await client.get("/_sim/accounts/acme/changes", params={"since": changes[2]["at"]})
    ).json()
    assert later[-1] == changes[2]
    assert all(c["at"] >= changes[2]["at"] for c in later)
    assert (await client.get("/_sim/accounts/nobody/changes")).status == 404


async def test_mutator_produces_changes_and_stops(make_sim: Sim) -> None:
    client = await make_sim(records_per_account=10)
    await login(client, "m1")
    await login(client, "m2")
    resp = await client.post(
        "/_sim/mutator",
        json={"changesPerSecond": 200, "resources": ["contacts", "orders"], "createRatio": 0.5},
    )
    assert (await resp.json())["running"]

    async def twenty_applied() -> bool:
        return int((await (await client.get("/_sim/stats")).json())["mutatorApplied"]) >= 20

    await eventually(twenty_applied)
    resp = await client.post("/_sim/mutator", json={"changesPerSecond": 0})
    state = await resp.json()
    assert not state["running"]
    applied = state["applied"]
    assert applied >= 20
    changes = []
    for account in ("m1", "m2"):
        changes += await (await client.get(f"/_sim/accounts/{account}/changes")).json()
    assert len(changes) == applied
    assert {c["op"] for c in changes} == {"create", "update"}
    assert {c["resource"] for c in changes} <= {"contacts", "orders"}
    await asyncio.sleep(0.1)
    stats = await (await client.get("/_sim/stats")).json()
    assert stats["mutatorApplied"] == applied
    assert stats["changes"] == applied


async def test_stats_and_account_admin(make_sim: Sim) -> None:
    client = await make_sim()
    resp = await client.post("/_sim/accounts/big", json={"records": 40, "resources": ["notes"]})
    assert resp.status == 201
    assert (await resp.json())["records"] == {"notes": 40}
    tokens = await login(client, "big")
    _, body = await _list(client, tokens, "notes", limit=1000)
    assert body["count"] == 40
    stats = await (await client.get("/_sim/stats")).json()
    assert stats["rest"]["byStatus"] == {"200": 1}
    assert stats["byStatus"]["302"] == 1
    assert stats["accounts"] == 1
    assert (await client.get("/_sim/accounts/big/notes/3")).status == 200
    assert (await client.post("/_sim/accounts/big/widgets", json={})).status == 404
    assert (await client.post("/_sim/mutator", json={"resources": ["widgets"]})).status == 400
