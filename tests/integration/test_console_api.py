"""The API the console needs beyond SPEC §3's table, over real HTTP against the real app.

* ``GET /elements/api-v2/events``: the organization-wide event log (filters, paging, newest
  first, and never another organization's events);
* the raw record of each event (``raw``) and the JSON body of each delivery (``body``) in the
  per-instance routes, still scoped to the caller's instances.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from aiohttp.test_utils import TestClient

from tests.conftest import ServiceUrls
from tests.integration.conftest import create_body, new_org_headers

BASE = "/elements/api-v2"
Client = TestClient[Any, Any]
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


async def _instance(api: Client, org: dict[str, str], name: str) -> int:
    body = create_body()
    body["name"] = name
    resp = await api.post(f"{BASE}/instances", json=body, headers=org)
    assert resp.status == 200, await resp.text()
    return int((await resp.json())["id"])


def _add_event(
    database_url: str,
    instance_id: int,
    object_type: str,
    object_id: str,
    event_type: str,
    at: datetime,
    *,
    delivery_status: str | None = None,
) -> tuple[str, str | None]:
    """An event (and optionally its delivery) as the poll and delivery workers leave them."""
    event_id = uuid.uuid4()
    record = {"id": object_id, "email": f"{object_id}@example.com", "nested": {"tags": [1, 2]}}
    delivery_id = uuid.uuid4() if delivery_status else None
    with psycopg.connect(database_url) as conn:
        if delivery_id is not None:
            body = {
                "message": {
                    "instanceId": instance_id,
                    "events": [{"eventId": str(event_id), "objectId": object_id}],
                    "raw": {object_type: [record]},
                }
            }
            conn.execute(
                "INSERT INTO deliveries (id, instance_id, status, body, event_count, created_at)"
                " VALUES (%s, %s, %s, %s, 1, %s)",
                (delivery_id, instance_id, delivery_status, json.dumps(body).encode(), at),
            )
        conn.execute(
            "INSERT INTO events (id, instance_id, object_type, object_id, event_type,"
            " event_date, poll_date, delivery_id, record, created_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                event_id,
                instance_id,
                object_type,
                object_id,
                event_type,
                at,
                at,
                delivery_id,
                json.dumps(record),
                at,
            ),
        )
    return str(event_id), str(delivery_id) if delivery_id else None


async def _events(api: Client, org: dict[str, str], **query: Any) -> tuple[list[Any], int]:
    resp = await api.get(f"{BASE}/events", params=query, headers=org)
    assert resp.status == 200, await resp.text()
    return await resp.json(), int(resp.headers["Elements-Total-Count"])


async def test_org_event_log_filters_pages_and_stays_in_the_organization(
    api: Client, org: dict[str, str], service_urls: ServiceUrls
) -> None:
    db = service_urls.database_url
    first = await _instance(api, org, "first")
    second = await _instance(api, org, "second")
    other_org = await new_org_headers(db, "other")
    foreign = await _instance(api, other_org, "foreign")
    _add_event(db, first, "contacts", "1", "CREATED", T0, delivery_status="delivered")
    _add_event(db, second, "orders", "2", "UPDATED", T0 + timedelta(minutes=1))
    _add_event(db, first, "contacts", "3", "UPDATED", T0 + timedelta(minutes=2))
    _add_event(db, foreign, "contacts", "4", "CREATED", T0 + timedelta(minutes=3))

    events, total = await _events(api, org)
    assert total == 3
    assert [(e["instanceId"], e["objectId"]) for e in events] == [
        (first, "3"),
        (second, "2"),
        (first, "1"),
    ]  # newest first, nothing of the other organization
    oldest = events[-1]
    assert oldest["eventType"] == "CREATED"
    assert oldest["objectType"] == "contacts"
    assert oldest["deliveryStatus"] == "delivered"
    assert oldest["raw"] == {"id": "1", "email": "1@example.com", "nested": {"tags": [1, 2]}}
    # The same shape as the per-instance route, plus instanceId.
    resp = await api.get(f"{BASE}/instances/{first}/events", headers=org)
    per_instance = {e["eventId"]: e for e in await resp.json()}
    for event in events:
        if event["instanceId"] == first:
            assert {**per_instance[event["eventId"]], "instanceId": first} == event

    assert [e["objectId"] for e in (await _events(api, org, instanceId=first))[0]] == ["3", "1"]
    assert [e["objectId"] for e in (await _events(api, org, objectType="orders"))[0]] == ["2"]
    assert [e["objectId"] for e in (await _events(api, org, eventType="updated"))[0]] == [
        "3",
        "2",
    ]
    since = (T0 + timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    assert [e["objectId"] for e in (await _events(api, org, since=since))[0]] == ["3", "2"]
    page2, total = await _events(api, org, page=2, pageSize=2)
    assert total == 3
    assert [e["objectId"] for e in page2] == ["1"]

    # The other organization sees only its own; neither can name the other's instance.
    assert [e["objectId"] for e in (await _events(api, other_org))[0]] == ["4"]
    for headers, instance in ((org, foreign), (other_org, first)):
        resp = await api.get(f"{BASE}/events", params={"instanceId": instance}, headers=headers)
        assert resp.status == 404
        assert str(instance) in (await resp.json())["message"]

    # A deleted instance's events leave the log with it.
    assert (await api.delete(f"{BASE}/instances/{second}", headers=org)).status == 200
    assert [e["objectId"] for e in (await _events(api, org))[0]] == ["3", "1"]


async def test_org_event_log_element_token_sees_only_its_instance(
    api: Client, org: dict[str, str], service_urls: ServiceUrls
) -> None:
    db = service_urls.database_url
    resp = await api.post(f"{BASE}/instances", json=create_body(), headers=org)
    mine = await resp.json()
    other = await _instance(api, org, "other")
    _add_event(db, mine["id"], "contacts", "1", "CREATED", T0)
    _add_event(db, other, "contacts", "2", "CREATED", T0)
    scoped = {"Authorization": org["Authorization"] + f", Element {mine['token']}"}
    events, total = await _events(api, scoped)
    assert (total, [e["objectId"] for e in events]) == (1, ["1"])
    resp = await api.get(f"{BASE}/events", params={"instanceId": other}, headers=scoped)
    assert resp.status == 404


async def test_org_event_log_rejects_bad_input_naming_the_parameter(
    api: Client, org: dict[str, str]
) -> None:
    assert (await api.get(f"{BASE}/events")).status == 401
    for query, field in [
        ({"eventType": "DELETED"}, "eventType"),
        ({"since": "yesterday"}, "since"),
        ({"instanceId": "x"}, "instanceId"),
        ({"instanceId": "0"}, "instanceId"),
        ({"pageSize": "501"}, "pageSize"),
        ({"page": "0"}, "page"),
    ]:
        resp = await api.get(f"{BASE}/events", params=query, headers=org)
        assert resp.status == 400, query
        assert (await resp.json())["message"].startswith(field + ":"), query


async def test_events_carry_their_raw_record_and_deliveries_their_body(
    api: Client, org: dict[str, str], service_urls: ServiceUrls
) -> None:
    db = service_urls.database_url
    instance = await _instance(api, org, "raw")
    event_id, delivery_id = _add_event(
        db, instance, "contacts", "7", "CREATED", T0, delivery_status="failed"
    )
    resp = await api.get(f"{BASE}/instances/{instance}/events", headers=org)
    [event] = await resp.json()
    assert event["eventId"] == event_id
    assert event["raw"] == {"id": "7", "email": "7@example.com", "nested": {"tags": [1, 2]}}
    resp = await api.get(f"{BASE}/instances/{instance}/deliveries", headers=org)
    [delivery] = await resp.json()
    assert delivery["id"] == delivery_id
    assert delivery["eventIds"] == [event_id]  # the existing fields are still there
    assert delivery["body"]["message"]["events"] == [{"eventId": event_id, "objectId": "7"}]
    assert delivery["body"]["message"]["raw"]["contacts"][0]["email"] == "7@example.com"
    # Another organization gets neither.
    other_org = await new_org_headers(db, "nosy")
    for route in ("events", "deliveries"):
        resp = await api.get(f"{BASE}/instances/{instance}/{route}", headers=other_org)
        assert resp.status == 404


async def test_openapi_documents_the_org_event_log(api: Client) -> None:
    spec = await (await api.get("/openapi.json")).json()
    operation = spec["paths"][f"{BASE}/events"]["get"]
    params = {p["name"] for p in operation["parameters"]}
    assert params == {"instanceId", "objectType", "eventType", "since", "page", "pageSize"}
    assert "raw" in spec["components"]["schemas"]["Event"]["properties"]
    assert "body" in spec["components"]["schemas"]["Delivery"]["properties"]
