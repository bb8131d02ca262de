"""``GET /ui/api/instances``: the console's instance list in one request.

Each item must be exactly what the public API answers for the instance (``GET /instances``)
and its polling state (``GET …/polling``), plus the count of its failed deliveries; it is
authenticated like the API and scoped to the caller's organization.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from aiohttp.test_utils import TestClient

from app.api.ui import SECURITY_HEADERS
from tests.conftest import ServiceUrls
from tests.integration.conftest import create_body, new_org_headers

BASE = "/elements/api-v2"
OVERVIEW = "/ui/api/instances"
Client = TestClient[Any, Any]


async def _instance(api: Client, org: dict[str, str], name: str) -> int:
    body = create_body()
    body["name"] = name
    resp = await api.post(f"{BASE}/instances", json=body, headers=org)
    assert resp.status == 200, await resp.text()
    return int((await resp.json())["id"])


def _add_deliveries(database_url: str, instance_id: int, *statuses: str) -> None:
    with psycopg.connect(database_url) as conn:
        for status in statuses:
            conn.execute(
                "INSERT INTO deliveries (id, instance_id, status, body, event_count)"
                " VALUES (%s, %s, %s, %s, 1)",
                (uuid.uuid4(), instance_id, status, b"{}"),
            )


async def test_one_request_answers_the_public_shapes_plus_failed_count(
    api: Client, org: dict[str, str], service_urls: ServiceUrls
) -> None:
    db = service_urls.database_url
    crm = await _instance(api, org, "CRM sync")
    shop = await _instance(api, org, "Shop orders")
    with psycopg.connect(db) as conn:
        conn.execute(
            "UPDATE poll_states SET consecutive_failures = 3, last_error = 'http_5xx: 502'"
            " WHERE instance_id = %s AND resource = 'contacts'",
            (shop,),
        )
    _add_deliveries(db, crm, "failed", "failed", "delivered", "pending")
    _add_deliveries(db, shop, "delivered")
    other = await new_org_headers(db, "someone else")
    _add_deliveries(db, await _instance(api, other, "not yours"), "failed")

    resp = await api.get(OVERVIEW, headers=org)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Elements-Total-Count"] == "2"
    for name, value in SECURITY_HEADERS.items():
        assert resp.headers[name] == value
    items = await resp.json()

    listed = await (await api.get(f"{BASE}/instances", headers=org)).json()
    assert [i["id"] for i in items] == [crm, shop]
    for item, public in zip(items, listed, strict=True):
        polling = await (
            await api.get(f"{BASE}/instances/{item['id']}/polling", headers=org)
        ).json()
        assert item == {**public, "polling": polling, "failedDeliveries": item["failedDeliveries"]}
        assert polling  # the instances poll resources: the comparison is not of two empty lists
    assert [i["failedDeliveries"] for i in items] == [2, 0]
    assert any(s["consecutiveFailures"] == 3 for s in items[1]["polling"])


async def test_pages_and_authentication(api: Client, org: dict[str, str]) -> None:
    await _instance(api, org, "first")
    second = await _instance(api, org, "second")
    resp = await api.get(OVERVIEW, params={"page": 2, "pageSize": 1}, headers=org)
    assert resp.status == 200
    assert [i["id"] for i in await resp.json()] == [second]
    assert resp.headers["Elements-Total-Count"] == "2"

    bad = await api.get(OVERVIEW, params={"pageSize": 0}, headers=org)
    assert bad.status == 400
    assert "pageSize" in (await bad.json())["message"]
    for headers in ({}, {"Authorization": "User nope, Organization nope"}):
        denied = await api.get(OVERVIEW, headers=headers)
        assert denied.status == 401
        assert "message" in await denied.json()
