"""What a hostile tenant found with ~2,000 requests ("Tenant-proof"), over real HTTP.

Each test is one finding: a 500 that must be a 4xx, a check that ran after the OAuth code
was spent, a parameter looked at before the credentials, a 405 without ``Allow``, or an
organization able to take more than its share.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from app.api.server import create_app
from app.domain.limits import MAX_API_PAGE_SIZE, MAX_BODY_BYTES, MAX_INSTANCE_ID
from app.settings import Settings
from tests.conftest import ServiceUrls
from tests.integration.conftest import FakeTokenEndpoint, create_body, new_org_headers

BASE = "/elements/api-v2"
Client = TestClient[Any, Any]


@pytest.fixture
async def client_with(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[Callable[..., Any]]:
    """Start an API with some settings overridden; every one started is closed after the test."""
    started: list[Client] = []

    async def start(**overrides: Any) -> Client:
        client: Client = TestClient(TestServer(create_app(make_settings(**overrides))))
        await client.start_server()
        started.append(client)
        return client

    yield start
    for client in started:
        await client.close()


def _count_instances(database_url: str, org: dict[str, str]) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM instances WHERE organization_id = %s", (int(org["X-Org-Id"]),)
        ).fetchone()
        assert row is not None
        return int(row[0])


async def _post_raw(api: Client, org: dict[str, str], raw: str | bytes) -> tuple[int, str]:
    headers = {**org, "Content-Type": "application/json"}
    resp = await api.post(f"{BASE}/instances", data=raw, headers=headers)
    return resp.status, (await resp.json())["message"]


def _body_json(**config: Any) -> str:
    return json.dumps(create_body(**config))


# -- 1. unhandled 500s, all before the code exchange ---------------------------------------

NUL = "\\u0000"
SURROGATE = "\\ud800"
BAD_BODIES: list[tuple[str, str, str]] = [
    ("NUL in name", _body_json().replace('"API Instance', f'"API{NUL} Instance'), "name"),
    ("surrogate in name", _body_json().replace('"API Instance', f'"API{SURROGATE}'), "name"),
    ("NUL in a tag", _body_json().replace('["crm"]', f'["c{NUL}rm"]'), "tags[0]"),
    ("surrogate in a tag", _body_json().replace('["crm"]', f'["{SURROGATE}"]'), "tags[0]"),
    (
        "NUL in a configuration value",
        _body_json().replace('"client-123"', f'"client{NUL}"'),
        "configuration.oauth.api.key",
    ),
    (
        "surrogate in a poller date field",
        _body_json().replace('"last_updated"', f'"last{SURROGATE}"'),
        "configuration.event.poller.configuration.contacts",
    ),
    (
        "NUL in a configuration key",
        _body_json().replace('"event.vendor.type"', f'"event{NUL}"'),
        "configuration.<key>",
    ),
    (
        "NUL inside a poller configuration given as a JSON string",
        json.dumps(
            create_body(
                **{
                    "event.poller.configuration": json.dumps(
                        {"contacts": {"url": "/contacts\u0000", "idField": "id"}}
                    )
                }
            )
        ),
        "configuration.event.poller.configuration",
    ),
    (
        "deep nesting in configuration",
        _body_json().replace('"polling"', "[" * 50_000 + "]" * 50_000),
        "body",
    ),
    (
        "deep nesting inside a poller configuration JSON string",
        json.dumps(create_body(**{"event.poller.configuration": "[" * 50_000 + "]" * 50_000})),
        "configuration.event.poller.configuration",
    ),
    (
        "NaN in configuration",
        _body_json().replace('"polling"', '"polling", "x.custom": NaN'),
        "configuration",
    ),
    (
        "interval overflowing a date",
        _body_json(**{"event.poller.refresh_interval": 1e300}),
        "configuration.event.poller.refresh_interval",
    ),
    ("body not UTF-8", b'{"name": "\xff"}'.decode("latin-1"), "body"),
    (
        "callback URL that is not text while events are off (found by schemathesis)",
        _body_json(**{"event.notification.enabled": False, "event.notification.callback.url": 0}),
        "configuration.event.notification.callback.url",
    ),
    (
        "vendor type that is not text while events are off (found by schemathesis)",
        _body_json(**{"event.notification.enabled": False, "event.vendor.type": []}),
        "configuration.event.vendor.type",
    ),
]


@pytest.mark.parametrize(
    ("raw", "field"), [c[1:] for c in BAD_BODIES], ids=[c[0] for c in BAD_BODIES]
)
async def test_bad_create_bodies_are_400_naming_the_field_before_any_exchange(
    api: Client,
    org: dict[str, str],
    token_endpoint: tuple[FakeTokenEndpoint, str],
    service_urls: ServiceUrls,
    raw: str,
    field: str,
) -> None:
    fake, _ = token_endpoint
    data = raw.encode("latin-1") if field == "body" else raw.encode()
    status, message = await _post_raw(api, org, data)
    assert status == 400, message
    assert message.startswith(field), message
    assert fake.requests == []  # the grant code was not spent
    assert _count_instances(service_urls.database_url, org) == 0


async def test_the_same_bodies_on_patch_are_400_and_change_nothing(
    api: Client, org: dict[str, str], token_endpoint: tuple[FakeTokenEndpoint, str]
) -> None:
    created = await api.post(f"{BASE}/instances", json=create_body(), headers=org)
    assert created.status == 200
    url = f"{BASE}/instances/{(await created.json())['id']}"
    headers = {**org, "Content-Type": "application/json"}
    for raw in (
        f'{{"name": "x{NUL}"}}',
        f'{{"tags": ["{SURROGATE}"]}}',
        '{"configuration": {"x": ' + "[" * 50_000 + "]" * 50_000 + "}}",
        '{"configuration": {"event.poller.refresh_interval": 1e300}}',
        '{"configuration": {"x": Infinity}}',
    ):
        resp = await api.patch(url, data=raw.encode(), headers=headers)
        assert resp.status == 400, await resp.text()
    assert (await (await api.get(url, headers=org)).json())["name"] == "API Instance with Polling"
    assert len(token_endpoint[0].requests) == 1  # only the create's exchange


@pytest.mark.parametrize(
    "instance_id",
    [str(MAX_INSTANCE_ID + 1), "99999999999999999999999999", "-1", "1_0", "１", "0x10", " 1"],
)
async def test_instance_ids_that_cannot_exist_are_404(
    api: Client, org: dict[str, str], instance_id: str
) -> None:
    for method, suffix in [
        ("GET", ""),
        ("PATCH", ""),
        ("DELETE", ""),
        ("GET", "/polling"),
        ("POST", "/polling/run"),
        ("GET", "/events"),
        ("GET", "/deliveries"),
        ("POST", "/deliveries/retry?status=failed"),
        ("POST", "/deliveries/00000000-0000-0000-0000-000000000000/retry"),
    ]:
        resp = await api.request(
            method, f"{BASE}/instances/{instance_id}{suffix}", json={}, headers=org
        )
        assert resp.status == 404, (method, suffix, await resp.text())


async def _raw_request(api: Client, head: bytes) -> bytes:
    """Send bytes aiohttp's client would refuse to (a header that is not UTF-8)."""
    reader, writer = await asyncio.open_connection(api.host, api.port)
    writer.write(head)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return answer


@pytest.mark.parametrize(
    "authorization",
    [b"User \xff\xfe, Organization \xc3", b"User \xed\xa0\x80, Organization x", b"\x80"],
)
async def test_authorization_header_that_is_not_utf8_is_401(
    api: Client, authorization: bytes
) -> None:
    answer = await _raw_request(
        api,
        b"GET " + BASE.encode() + b"/instances HTTP/1.1\r\nHost: localhost\r\n"
        b"Authorization: " + authorization + b"\r\nConnection: close\r\n\r\n",
    )
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"401", answer[:300]
    assert b'"message"' in rest


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/events?objectType=%00", "objectType"),
        ("/events?since=0001-01-01T00:00:00%2B14:00", "since"),
        ("/events?since=9999-12-31T23:59:59-14:00", "since"),
        ("/events?page=%00", "page"),
        ("/deliveries?status=%00", "status"),
        ("/events?pageSize=" + str(MAX_API_PAGE_SIZE + 1), "pageSize"),
        ("/events?page=99999999999999999999999", "page"),
    ],
)
async def test_bad_query_parameters_are_400_naming_them(
    api: Client, org: dict[str, str], path: str, param: str
) -> None:
    created = await api.post(f"{BASE}/instances", json=create_body(), headers=org)
    instance_id = (await created.json())["id"]
    resp = await api.get(f"{BASE}/instances/{instance_id}{path}", headers=org)
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["message"].startswith(param)


async def test_oauth_url_parameters_with_nul_are_400(api: Client, org: dict[str, str]) -> None:
    url = f"{BASE}/elements/infusionsoftrest/oauth/url"
    resp = await api.get(url + "?apiKey=k&callbackUrl=https://a.example/cb&state=%00", headers=org)
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["message"].startswith("state")


async def test_body_over_the_limit_is_413(api: Client, org: dict[str, str]) -> None:
    raw = b'{"name": "' + b"x" * MAX_BODY_BYTES + b'"}'
    resp = await api.post(f"{BASE}/instances", data=raw, headers=org)
    assert resp.status == 413
    assert (await resp.json())["message"].startswith("body")


# -- 2. the organization's instance limit is checked before the exchange ----------------------


async def test_instance_limit_is_refused_naming_the_setting_before_the_exchange(
    client_with: Callable[..., Any],
    org: dict[str, str],
    token_endpoint: tuple[FakeTokenEndpoint, str],
    service_urls: ServiceUrls,
) -> None:
    api: Client = await client_with(max_instances_per_org=2)
    for _ in range(2):
        assert (await api.post(f"{BASE}/instances", json=create_body(), headers=org)).status == 200
    exchanges = len(token_endpoint[0].requests)
    resp = await api.post(f"{BASE}/instances", json=create_body(), headers=org)
    assert resp.status == 409
    assert "POLLINATOR_MAX_INSTANCES_PER_ORG" in (await resp.json())["message"]
    assert len(token_endpoint[0].requests) == exchanges
    # Another organization is not affected; a deleted instance frees its place.
    other = await new_org_headers(service_urls.database_url, "other")
    assert (await api.post(f"{BASE}/instances", json=create_body(), headers=other)).status == 200
    first = (await (await api.get(f"{BASE}/instances", headers=org)).json())[0]["id"]
    assert (await api.delete(f"{BASE}/instances/{first}", headers=org)).status == 200
    assert (await api.post(f"{BASE}/instances", json=create_body(), headers=org)).status == 200


async def test_concurrent_creates_cannot_pass_the_instance_limit_together(
    client_with: Callable[..., Any], org: dict[str, str], service_urls: ServiceUrls
) -> None:
    api: Client = await client_with(max_instances_per_org=3)
    answers = await asyncio.gather(
        *(api.post(f"{BASE}/instances", json=create_body(), headers=org) for _ in range(8))
    )
    assert sorted(a.status for a in answers).count(200) == 3
    assert {a.status for a in answers} == {200, 409}
    assert _count_instances(service_urls.database_url, org) == 3


# -- 3. credentials before any parameter, on every route ---------------------------------------


def _garbage_path(canonical: str) -> str:
    return re.sub(r"\{[^}]+\}", "not-a-%00-valid-id", canonical)


async def test_every_route_answers_401_before_looking_at_any_parameter(api: Client) -> None:
    bad_query = "?eventType=X&status=zzz&page=-1&pageSize=0&since=yesterday&objectType=%00"
    checked = 0
    for resource in api.server.app.router.resources():
        canonical = resource.canonical
        if not canonical.startswith(BASE):
            continue
        for route in resource:
            if route.method == "HEAD":
                continue
            for headers in (
                {},
                {"Authorization": "User nope, Organization nope"},
                {"Authorization": "Bearer x"},
            ):
                resp = await api.request(
                    route.method,
                    _garbage_path(canonical) + bad_query,
                    data=b'{"name": "\\u0000", "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
                    headers={**headers, "Content-Type": "application/json"},
                )
                assert resp.status == 401, (route.method, canonical, headers)
                assert "message" in await resp.json()
            checked += 1
    assert checked == 19  # every route under the base path (routes, console, lifecycle)


@pytest.mark.parametrize(
    "path",
    [
        "/instances/1/events?eventType=X",
        "/instances/1/deliveries?status=zzz",
        "/instances/1/deliveries/not-a-uuid/retry",
        "/instances/1/deliveries/retry",
    ],
)
async def test_reported_unauthenticated_probes_are_401(api: Client, path: str) -> None:
    method = "POST" if path.endswith("retry") else "GET"
    assert (await api.request(method, BASE + path)).status == 401


# -- 4. wrong methods --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/instances", {"GET", "POST"}),
        ("PUT", "/instances/1", {"GET", "PATCH", "DELETE"}),
        ("GET", "/instances/1/polling/run", {"POST"}),
        ("DELETE", "/instances/1/events", {"GET"}),
    ],
)
async def test_wrong_method_on_a_known_path_is_405_with_allow(
    api: Client, org: dict[str, str], method: str, path: str, allowed: set[str]
) -> None:
    resp = await api.request(method, BASE + path, headers=org)
    assert resp.status == 405
    assert allowed <= {m.strip() for m in resp.headers["Allow"].split(",")}
    assert "message" in await resp.json()


# -- 5. OAuth app changes and the per-organization request rate ------------------------------


async def test_patch_changing_the_oauth_app_without_a_code_is_refused(
    api: Client, org: dict[str, str], token_endpoint: tuple[FakeTokenEndpoint, str]
) -> None:
    created = await api.post(f"{BASE}/instances", json=create_body(), headers=org)
    url = f"{BASE}/instances/{(await created.json())['id']}"
    for key in ("oauth.api.key", "oauth.api.secret"):
        resp = await api.patch(url, json={"configuration": {key: "another-app"}}, headers=org)
        assert resp.status == 400
        assert (await resp.json())["message"].startswith(f"configuration.{key}")
    # Echoing the redacted secret back is no change.
    echo = {"configuration": {"oauth.api.secret": "********", "oauth.api.key": "client-123"}}
    assert (await api.patch(url, json=echo, headers=org)).status == 200
    assert len(token_endpoint[0].requests) == 1


async def test_patch_with_a_code_exchanges_it_for_the_new_app_after_validating(
    api: Client, org: dict[str, str], token_endpoint: tuple[FakeTokenEndpoint, str]
) -> None:
    fake, _ = token_endpoint
    created = await api.post(f"{BASE}/instances", json=create_body(), headers=org)
    url = f"{BASE}/instances/{(await created.json())['id']}"
    bad = {
        "providerData": {"code": "good-new"},
        "configuration": {"oauth.api.key": "app-2", "event.poller.refresh_interval": "soon"},
    }
    assert (await api.patch(url, json=bad, headers=org)).status == 400
    assert len(fake.requests) == 1  # validation first: the code is still unspent
    good = {"providerData": {"code": "good-new"}, "configuration": {"oauth.api.key": "app-2"}}
    resp = await api.patch(url, json=good, headers=org)
    assert resp.status == 200, await resp.text()
    assert fake.requests[-1]["form"]["code"] == "good-new"
    assert fake.requests[-1]["form"]["client_id"] == "app-2"
    assert (await resp.json())["configuration"]["oauth.api.key"] == "app-2"
    refused = {"providerData": {"code": "bad"}, "configuration": {"oauth.api.key": "app-3"}}
    resp = await api.patch(url, json=refused, headers=org)
    assert resp.status == 400
    assert (await resp.json())["message"].startswith("providerData.code")
    shown = await (await api.get(url, headers=org)).json()
    assert shown["configuration"]["oauth.api.key"] == "app-2"


async def test_requests_over_the_organization_rate_are_429_with_retry_after(
    client_with: Callable[..., Any], org: dict[str, str], service_urls: ServiceUrls
) -> None:
    # One token per 1000 s: the second request cannot find one, however slow this machine.
    api: Client = await client_with(api_requests_per_second_per_org=0.001)
    assert (await api.get(f"{BASE}/instances", headers=org)).status == 200
    resp = await api.get(f"{BASE}/instances", headers=org)
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) >= 1
    body = await resp.json()
    assert "POLLINATOR_API_REQUESTS_PER_SECOND_PER_ORG" in body["message"]
    assert body["requestId"]
    # Keyed by organization: another one has its own budget.
    other = await new_org_headers(service_urls.database_url, "other")
    assert (await api.get(f"{BASE}/instances", headers=other)).status == 200
    # Applied after authentication: bad credentials stay 401 and spend nothing.
    assert (await api.get(f"{BASE}/instances")).status == 401


async def test_rate_limit_fails_open_when_redis_is_down(
    client_with: Callable[..., Any], org: dict[str, str]
) -> None:
    probe = web.Application()  # a free local port that nothing listens on once closed
    server = TestServer(probe)
    await server.start_server()
    dead = f"redis://127.0.0.1:{server.port}/0"
    await server.close()
    api: Client = await client_with(api_requests_per_second_per_org=0.001, redis_url=dead)
    for _ in range(3):
        assert (await api.get(f"{BASE}/instances", headers=org)).status == 200
