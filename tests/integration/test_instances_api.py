"""The instances API over real HTTP against real PostgreSQL (SPEC §3)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import redis
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import NullPool
from sqlalchemy import create_engine as sa_create_engine

from app import keys
from app.api.server import create_app
from app.db import sync_url
from app.security import DecryptionError, SecretBox
from app.settings import Settings
from tests.conftest import ServiceUrls
from tests.integration.conftest import FakeTokenEndpoint, create_body, new_org_headers
from workers.beat import claim_due

BASE = "/elements/api-v2"
Client = TestClient[Any, Any]


async def _create(api: Client, org: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    resp = await api.post(f"{BASE}/instances", json=body, headers=org)
    assert resp.status == 200, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


def _count_instances(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM instances").fetchone()
        assert row is not None
        return int(row[0])


async def test_create_with_spec_body(
    api: Client, org: dict[str, str], token_endpoint: tuple[FakeTokenEndpoint, str]
) -> None:
    data = await _create(api, org, create_body())
    assert isinstance(data["id"], int)
    assert data["token"]
    assert data["element"] == {"key": "infusionsoftrest", "name": "Infusionsoft REST"}
    assert data["tags"] == [{"name": "crm"}]
    assert data["eventsEnabled"] is True
    assert data["valid"] is True
    assert data["disabled"] is False
    config = data["configuration"]
    assert config["oauth.api.key"] == "client-123"
    assert config["oauth.api.secret"] == "********"
    assert config["event.notification.signature.key"] == "********"
    assert config["oauth.user.token"] == "********"
    assert config["oauth.user.refresh_token"] == "********"
    assert set(config["event.poller.configuration"]) == {"contacts"}
    # The real code exchange happened at the configured token URL.
    fake, _ = token_endpoint
    form = fake.requests[-1]["form"]
    assert form["grant_type"] == "authorization_code"
    assert form["code"] == "good-code"
    assert form["redirect_uri"] == "https://app.example.com/oauth/callback"
    assert form["client_id"] == "client-123"


async def test_poller_configuration_as_json_string_and_numeric_string_interval(
    api: Client, org: dict[str, str]
) -> None:
    body = create_body()
    poller = body["configuration"]["event.poller.configuration"]
    body["configuration"]["event.poller.configuration"] = json.dumps(poller)
    body["configuration"]["event.poller.refresh_interval"] = "5"
    data = await _create(api, org, body)
    config = data["configuration"]
    assert config["event.poller.configuration"] == poller
    assert config["event.poller.refresh_interval"] == 5


async def test_default_poller_configuration_when_absent(api: Client, org: dict[str, str]) -> None:
    data = await _create(api, org, create_body(**{"event.poller.configuration": None}))
    resources = set(data["configuration"]["event.poller.configuration"])
    assert resources == {
        "contacts",
        "opportunities",
        "orders",
        "tasks",
        "appointments",
        "transactions",
        "files",
    }


INVALID_CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("element", lambda b: b.update(element={"key": "salesforce"}), "element.key"),
    ("no element", lambda b: b.pop("element"), "element.key"),
    ("no code", lambda b: b.update(providerData={}), "providerData.code"),
    ("no api key", lambda b: b["configuration"].pop("oauth.api.key"), "oauth.api.key"),
    ("no api secret", lambda b: b["configuration"].pop("oauth.api.secret"), "oauth.api.secret"),
    (
        "no oauth callback",
        lambda b: b["configuration"].pop("oauth.callback.url"),
        "oauth.callback.url",
    ),
    (
        "no callback",
        lambda b: b["configuration"].pop("event.notification.callback.url"),
        "event.notification.callback.url",
    ),
    (
        "callback scheme",
        lambda b: b["configuration"].update({"event.notification.callback.url": "ftp://x.com/e"}),
        "event.notification.callback.url",
    ),
    (
        "callback loopback",
        lambda b: b["configuration"].update(
            {"event.notification.callback.url": "http://127.0.0.1:9000/e"}
        ),
        "event.notification.callback.url",
    ),
    (
        "callback hex loopback",
        lambda b: b["configuration"].update(
            {"event.notification.callback.url": "http://0x7f000001/e"}
        ),
        "event.notification.callback.url",
    ),
    (
        "callback private",
        lambda b: b["configuration"].update(
            {"event.notification.callback.url": "http://10.1.2.3/e"}
        ),
        "event.notification.callback.url",
    ),
    (
        "callback metadata",
        lambda b: b["configuration"].update(
            {"event.notification.callback.url": "http://169.254.169.254/latest"}
        ),
        "event.notification.callback.url",
    ),
    (
        "callback localhost",
        lambda b: b["configuration"].update(
            {"event.notification.callback.url": "http://localhost:8091/"}
        ),
        "event.notification.callback.url",
    ),
    (
        "callback ipv6 loopback",
        lambda b: b["configuration"].update({"event.notification.callback.url": "http://[::1]/"}),
        "event.notification.callback.url",
    ),
    (
        "interval not number",
        lambda b: b["configuration"].update({"event.poller.refresh_interval": "soon"}),
        "event.poller.refresh_interval",
    ),
    (
        "interval below min",
        lambda b: b["configuration"].update({"event.poller.refresh_interval": 0.5}),
        "event.poller.refresh_interval",
    ),
    (
        "poller not object",
        lambda b: b["configuration"].update({"event.poller.configuration": [1, 2]}),
        "event.poller.configuration",
    ),
    (
        "poller bad json string",
        lambda b: b["configuration"].update({"event.poller.configuration": "{nope"}),
        "event.poller.configuration",
    ),
    (
        "resource without url",
        lambda b: b["configuration"]["event.poller.configuration"]["contacts"].pop("url"),
        "contacts.url",
    ),
    (
        "resource without idField",
        lambda b: b["configuration"]["event.poller.configuration"]["contacts"].pop("idField"),
        "contacts.idField",
    ),
    (
        "bad date format",
        lambda b: b["configuration"]["event.poller.configuration"]["contacts"][
            "datesConfiguration"
        ].update(updatedDateFormat="yyyy-MM-dd'T'HH:mm:ss.SSSQ"),
        "updatedDateFormat",
    ),
    (
        "unknown time zone",
        lambda b: b["configuration"]["event.poller.configuration"]["contacts"][
            "datesConfiguration"
        ].update(createdDateTimezone="Mars/Olympus"),
        "createdDateTimezone",
    ),
    (
        "unknown template variable",
        lambda b: b["configuration"]["event.poller.configuration"]["contacts"].update(
            url="/contacts?since=${lastPoll:yyyy}"
        ),
        "contacts.url",
    ),
    (
        "enabled not bool",
        lambda b: b["configuration"].update({"event.notification.enabled": "maybe"}),
        "event.notification.enabled",
    ),
    ("tags neither list nor string", lambda b: b.update(tags=5), "tags"),
    (
        "bad whsec signature key",
        lambda b: b["configuration"].update({"event.notification.signature.key": "whsec_%%%"}),
        "event.notification.signature.key",
    ),
]


@pytest.mark.parametrize(
    ("case", "mutate", "field"), INVALID_CASES, ids=[c[0] for c in INVALID_CASES]
)
async def test_validation_rules_name_the_field_and_store_nothing(
    api: Client,
    org: dict[str, str],
    service_urls: ServiceUrls,
    case: str,
    mutate: Callable[[dict[str, Any]], None],
    field: str,
) -> None:
    before = _count_instances(service_urls.database_url)
    body = create_body()
    mutate(body)
    resp = await api.post(f"{BASE}/instances", json=body, headers=org)
    assert resp.status == 400, case
    data = await resp.json()
    assert set(data) == {"requestId", "message"}
    assert field in data["message"], data["message"]
    assert _count_instances(service_urls.database_url) == before


async def test_body_not_json_and_too_large(api: Client, org: dict[str, str]) -> None:
    resp = await api.post(f"{BASE}/instances", data=b"{not json", headers=org)
    assert resp.status == 400
    assert "body" in (await resp.json())["message"]
    big = create_body()
    big["name"] = "x" * (300 * 1024)
    resp = await api.post(f"{BASE}/instances", json=big, headers=org)
    assert resp.status == 413
    assert "256 KB" in (await resp.json())["message"]


@pytest.mark.parametrize(
    ("code", "status", "text"),
    [
        ("bad-code", 400, "Invalid authorization code"),
        ("boom", 502, "answered 500"),
        ("slow", 502, "timed out"),
    ],
)
async def test_provider_refusal_or_outage_stores_nothing(
    api: Client,
    org: dict[str, str],
    service_urls: ServiceUrls,
    code: str,
    status: int,
    text: str,
) -> None:
    before = _count_instances(service_urls.database_url)
    body = create_body()
    body["providerData"]["code"] = code
    resp = await api.post(f"{BASE}/instances", json=body, headers=org)
    assert resp.status == status
    message = (await resp.json())["message"]
    assert "providerData.code" in message
    assert text in message
    assert _count_instances(service_urls.database_url) == before


async def test_private_callback_allowed_when_operator_allows(
    make_settings: Callable[..., Settings], org: dict[str, str]
) -> None:
    client: Client = TestClient(TestServer(create_app(make_settings(allow_private_callbacks=True))))
    await client.start_server()
    try:
        body = create_body(**{"event.notification.callback.url": "http://127.0.0.1:8091/"})
        data = await _create(client, org, body)
        assert data["configuration"]["event.notification.callback.url"] == "http://127.0.0.1:8091/"
    finally:
        await client.close()


async def test_authentication(api: Client, org: dict[str, str]) -> None:
    for header in (None, "User x, Organization y", "Bearer abc", "User only"):
        headers = {"Authorization": header} if header else {}
        resp = await api.get(f"{BASE}/instances", headers=headers)
        assert resp.status == 401
        assert "message" in await resp.json()
    created = await _create(api, org, create_body())
    element = {"Authorization": org["Authorization"] + f", Element {created['token']}"}
    resp = await api.get(f"{BASE}/instances/{created['id']}", headers=element)
    assert resp.status == 200
    bad = {"Authorization": org["Authorization"] + ", Element wrong-token"}
    assert (await api.get(f"{BASE}/instances/{created['id']}", headers=bad)).status == 401


async def test_tenant_isolation(
    api: Client, org: dict[str, str], service_urls: ServiceUrls
) -> None:
    created = await _create(api, org, create_body())
    other = await new_org_headers(service_urls.database_url, "globex")
    url = f"{BASE}/instances/{created['id']}"
    assert (await api.get(url, headers=other)).status == 404
    assert (await api.patch(url, json={"name": "stolen"}, headers=other)).status == 404
    assert (await api.delete(url, headers=other)).status == 404
    listed = await (await api.get(f"{BASE}/instances", headers=other)).json()
    assert created["id"] not in [i["id"] for i in listed]
    # and it is still intact for its owner
    mine = await (await api.get(url, headers=org)).json()
    assert mine["name"] == "API Instance with Polling"


async def test_list_paging(api: Client, service_urls: ServiceUrls) -> None:
    headers = await new_org_headers(service_urls.database_url, "pager")
    ids = [(await _create(api, headers, create_body()))["id"] for _ in range(5)]
    page1 = await api.get(f"{BASE}/instances?page=1&pageSize=2", headers=headers)
    assert page1.headers["Elements-Total-Count"] == "5"
    page3 = await api.get(f"{BASE}/instances?page=3&pageSize=2", headers=headers)
    got = [i["id"] for i in await page1.json()] + [i["id"] for i in await page3.json()]
    assert got == ids[:2] + ids[4:]
    bad = await api.get(f"{BASE}/instances?pageSize=501", headers=headers)
    assert bad.status == 400
    assert "pageSize" in (await bad.json())["message"]


async def test_patch_keeps_what_it_does_not_change(
    api: Client, org: dict[str, str], service_urls: ServiceUrls
) -> None:
    created = await _create(api, org, create_body())
    url = f"{BASE}/instances/{created['id']}"
    resp = await api.patch(
        url,
        json={
            "name": "renamed",
            "configuration": {
                "event.poller.refresh_interval": "30",
                "oauth.api.secret": "********",
            },
        },
        headers=org,
    )
    assert resp.status == 200, await resp.text()
    data = await resp.json()
    assert data["name"] == "renamed"
    assert data["tags"] == [{"name": "crm"}]
    assert data["configuration"]["event.poller.refresh_interval"] == 30
    assert (
        data["configuration"]["event.poller.configuration"]
        == (created["configuration"]["event.poller.configuration"])
    )
    assert data["configuration"]["oauth.api.secret"] == "********"
    assert "token" not in data
    # the stored secret survived the echoed redaction
    row = _instance_row(service_urls.database_url, created["id"])
    box = SecretBox("test-secret-key-0123456789abcdef0123456789")
    assert box.open(row["secrets"]) == {
        "oauth.api.secret": "client-secret-XYZ",
        "event.notification.signature.key": "sig-key-ABC",
    }
    assert box.open(row["tokens"])["access_token"] == "AT-good-code"
    # what the views redact without decrypting
    assert row["secret_keys"] == [
        "event.notification.signature.key",
        "oauth.api.secret",
        "oauth.user.token",
        "oauth.user.refresh_token",
    ]
    # invalid patch: 400 naming the field, nothing changed
    bad = await api.patch(
        url, json={"configuration": {"event.poller.refresh_interval": "x"}}, headers=org
    )
    assert bad.status == 400
    assert "event.poller.refresh_interval" in (await bad.json())["message"]
    again = await (await api.get(url, headers=org)).json()
    assert again["configuration"]["event.poller.refresh_interval"] == 30


async def test_patch_adding_resource_keeps_existing_watermarks(
    api: Client, org: dict[str, str], service_urls: ServiceUrls
) -> None:
    created = await _create(api, org, create_body())
    before = _poll_states(service_urls.database_url, created["id"])
    poller = dict(created["configuration"]["event.poller.configuration"])
    poller["orders"] = {
        "url": "/orders?since=${gmtDate:yyyy-MM-dd'T'HH:mm:ss.SSS'Z'}",
        "idField": "id",
    }
    sent = datetime.now(UTC)
    resp = await api.patch(
        f"{BASE}/instances/{created['id']}",
        json={"configuration": {"event.poller.configuration": poller}},
        headers=org,
    )
    assert resp.status == 200, await resp.text()
    answered = datetime.now(UTC)
    after = _poll_states(service_urls.database_url, created["id"])
    assert after["contacts"] == before["contacts"]
    # The new resource starts at the (whole second of the) moment it was added.
    assert sent.replace(microsecond=0) <= after["orders"] <= answered
    assert after["orders"] >= after["contacts"]


async def test_delete_then_404(api: Client, org: dict[str, str], service_urls: ServiceUrls) -> None:
    created = await _create(api, org, create_body())
    url = f"{BASE}/instances/{created['id']}"
    hot = redis.Redis.from_url(service_urls.redis_url)
    watermark_key = keys.watermark(created["id"], "contacts")
    hot.set(watermark_key, "{}")
    assert (await api.delete(url, headers=org)).status == 200
    assert not hot.exists(watermark_key)  # hot state forgotten with the instance
    hot.close()
    assert (await api.get(url, headers=org)).status == 404
    assert (await api.patch(url, json={"name": "x"}, headers=org)).status == 404
    assert (await api.delete(url, headers=org)).status == 404
    listed = await (await api.get(f"{BASE}/instances", headers=org)).json()
    assert created["id"] not in [i["id"] for i in listed]
    row = _instance_row(service_urls.database_url, created["id"])
    assert row["secrets"] is None  # secrets and tokens forgotten
    assert row["tokens"] is None
    assert _poll_states(service_urls.database_url, created["id"]) == {}


async def test_secrets_redacted_everywhere_and_absent_from_logs(
    api: Client, org: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    created = await _create(api, org, create_body())
    url = f"{BASE}/instances/{created['id']}"
    responses = [
        json.dumps(created),
        await (await api.get(url, headers=org)).text(),
        await (await api.get(f"{BASE}/instances", headers=org)).text(),
        await (await api.patch(url, json={"name": "n"}, headers=org)).text(),
    ]
    secrets = ["client-secret-XYZ", "sig-key-ABC", "AT-good-code", "RT-good-code"]
    for text in responses:
        for secret in secrets:
            assert secret not in text
    org_secrets = org["Authorization"].replace(",", " ").split()[1::2]
    logged = caplog.text
    for secret in [*secrets, *org_secrets, created["token"]]:
        assert secret not in logged


async def test_secrets_unreadable_in_database_without_key(
    api: Client, org: dict[str, str], service_urls: ServiceUrls
) -> None:
    created = await _create(api, org, create_body())
    with psycopg.connect(service_urls.database_url) as conn:
        row = conn.execute("SELECT * FROM instances WHERE id = %s", (created["id"],)).fetchone()
        orgs = conn.execute("SELECT * FROM organizations").fetchall()
    dump = repr(row) + repr(orgs)
    for secret in [
        "client-secret-XYZ",
        "sig-key-ABC",
        "AT-good-code",
        "RT-good-code",
        created["token"],
        *org["Authorization"].replace(",", " ").split()[1::2],
    ]:
        assert secret not in dump
    row = _instance_row(service_urls.database_url, created["id"])
    for blob in (row["secrets"], row["tokens"]):
        with pytest.raises(DecryptionError):
            SecretBox("another-key-0123456789abcdef0123456789ab").open(blob)


def _instance_row(database_url: str, instance_id: int) -> dict[str, Any]:
    with psycopg.connect(database_url) as conn:
        cur = conn.execute("SELECT * FROM instances WHERE id = %s", (instance_id,))
        row = cur.fetchone()
        assert row is not None
        assert cur.description is not None
        return {d.name: v for d, v in zip(cur.description, row, strict=True)}


def _poll_states(database_url: str, instance_id: int) -> dict[str, Any]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT resource, watermark_at FROM poll_states WHERE instance_id = %s",
            (instance_id,),
        ).fetchall()
    return {r[0]: r[1] for r in rows}


async def test_created_instance_is_scheduled_within_one_interval(
    api: Client, org: dict[str, str], service_urls: ServiceUrls
) -> None:
    created = await _create(api, org, create_body())
    row = _instance_row(service_urls.database_url, created["id"])
    assert row["next_poll_at"] is not None
    delay = (row["next_poll_at"] - row["created_at"]).total_seconds()
    assert 0 < delay <= 15 * 60
    disabled = await _create(api, org, create_body(**{"event.notification.enabled": False}))
    assert _instance_row(service_urls.database_url, disabled["id"])["next_poll_at"] is None


async def test_the_element_token_names_its_instance_on_the_singular_route(
    api: Client, org: dict[str, str]
) -> None:
    """``GET /instance`` (SPEC §8): the instance of the ``Element`` token, nothing else."""
    first = await _create(api, org, create_body())
    await _create(api, org, create_body())
    element = {"Authorization": org["Authorization"] + f", Element {first['token']}"}
    resp = await api.get(f"{BASE}/instance", headers=element)
    assert resp.status == 200
    shown = await resp.json()
    assert shown["id"] == first["id"]
    assert "token" not in shown
    assert shown["configuration"]["oauth.api.secret"] == "********"
    without = await api.get(f"{BASE}/instance", headers=org)
    assert without.status == 400
    assert (await without.json())["message"].startswith("Authorization")
    assert (await api.get(f"{BASE}/instance")).status == 401
    await api.delete(f"{BASE}/instances/{first['id']}", headers=org)
    assert (await api.get(f"{BASE}/instance", headers=element)).status in (401, 404)


async def test_poll_now_runs_soon_and_keeps_the_instance_on_its_schedule_grid(
    api: Client, org: dict[str, str], service_urls: ServiceUrls
) -> None:
    created = await _create(api, org, create_body())  # every 15 minutes, phase by its id
    scheduled = _instance_row(service_urls.database_url, created["id"])["next_poll_at"]
    resp = await api.post(f"{BASE}/instances/{created['id']}/polling/run", headers=org)
    assert resp.status == 202, await resp.text()
    due = _instance_row(service_urls.database_url, created["id"])["next_poll_at"]
    assert due <= datetime.now(UTC)  # beat's next tick claims it
    assert (scheduled - due) % timedelta(minutes=15) == timedelta(0)  # a tick of its grid
    engine = sa_create_engine(sync_url(service_urls.database_url), poolclass=NullPool)
    try:
        claim = claim_due(engine, datetime.now(UTC))
    finally:
        engine.dispose()
    assert created["id"] in {c.instance_id for c in claim.polls}
    # Rescheduled from the tick it was due at: back to the slot it had, phase kept.
    assert _instance_row(service_urls.database_url, created["id"])["next_poll_at"] == scheduled
