"""The web console end to end: headless Chromium (Debian's, driven by Playwright) against the
real app over real HTTP, real PostgreSQL and Redis, a fake provider authorize page and token
endpoint.

Skipped when no Chromium is installed. Playwright never downloads a browser here: it is
pointed at the system binary (``POLLINATOR_TEST_BROWSER`` or ``chromium`` on ``PATH``).
Set ``POLLINATOR_UI_SCREENSHOTS`` to a directory to keep screenshots of what the tests see
(``docs/screenshots/`` holds the ones the README shows).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from playwright.async_api import Browser, Page, async_playwright
from playwright.async_api import Error as PlaywrightError
from yarl import URL

from app.api.server import create_app
from app.domain.pollconfig import DEFAULT_POLLER_CONFIGURATION
from app.security import SecretBox
from app.settings import Settings
from tests.conftest import SECRET_KEY, ServiceUrls
from tests.integration.conftest import FakeTokenEndpoint, create_body

BASE = "/elements/api-v2"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 20_000
# What the browser does when the user switches tabs (headless Chromium never hides one).
SET_VISIBILITY = (
    "Object.defineProperty(document, 'visibilityState', {value: '%s', configurable: true});"
    "document.dispatchEvent(new Event('visibilitychange'))"
)
PHONE = {"width": 375, "height": 812}
DESKTOP = {"width": 1280, "height": 900}
# Counts the console's API calls, and how many are in flight, to see live refresh pause.
COUNT_FETCHES = """
window.__apiCalls = 0;
window.__inFlight = 0;
const realFetch = window.fetch;
window.fetch = function (input, init) {
  const url = String(input && input.url ? input.url : input);
  if (!url.includes('/elements/api-v2/') && !url.includes('/ui/api/')) {
    return realFetch(input, init);
  }
  window.__apiCalls += 1;
  window.__inFlight += 1;
  return realFetch(input, init).finally(() => { window.__inFlight -= 1; });
};
"""


def _browser_binary() -> str | None:
    explicit = os.environ.get("POLLINATOR_TEST_BROWSER")
    if explicit:
        return explicit
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    binary = _browser_binary()
    if binary is None:
        pytest.skip("no Chromium/Chrome on this machine (set POLLINATOR_TEST_BROWSER)")
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=binary, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


class Tab:
    """One page plus every script error and console error it produced."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []
        page.set_default_timeout(WAIT_MS)
        page.on("pageerror", lambda exc: self.problems.append(f"pageerror: {exc}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        # A 4xx the test asks for is logged by Chromium as "Failed to load resource".
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.problems.append(f"console: {message.text}")

    async def eval(self, expression: str) -> Any:
        return await self.page.evaluate(expression)

    async def wait_for(self, expression: str) -> Any:
        """Until ``expression`` is truthy (navigations in between are fine).

        Polled from here: Playwright's ``wait_for_function`` evaluates its string inside the
        page, which the console's CSP (no ``unsafe-eval``) rightly refuses.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_MS / 1000
        last: Any = None
        while loop.time() < deadline:
            try:
                last = await self.page.evaluate(expression)
                if last:
                    return last
            except PlaywrightError as exc:  # e.g. the context went away while navigating
                last = exc
            await asyncio.sleep(0.1)
        text = await self.page.evaluate("document.body ? document.body.innerText : ''")
        raise AssertionError(
            f"timed out waiting for {expression!r} ({last!r}) at {self.page.url}: {text}"
        )

    async def goto(self, url: str) -> None:
        await self.page.goto(url)

    async def screenshot(self, name: str) -> None:
        """Saved only when ``POLLINATOR_UI_SCREENSHOTS`` names a directory."""
        folder = os.environ.get("POLLINATOR_UI_SCREENSHOTS")
        if folder:
            await self.page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)

    async def no_horizontal_scroll(self) -> None:
        widths = await self.eval(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth,"
            " document.body.scrollWidth]"
        )
        assert widths[0] <= widths[1], (self.page.url, widths)
        assert widths[2] <= widths[1], (self.page.url, widths)


@pytest.fixture
async def tab(browser: Browser) -> AsyncIterator[Tab]:
    context = await browser.new_context(viewport=DESKTOP)
    await context.add_init_script(script=COUNT_FETCHES)
    try:
        yield Tab(await context.new_page())
    finally:
        await context.close()


@pytest.fixture
async def authorize_server() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """Keap's consent page stand-in: grants at once and redirects with a ``good-`` code."""
    seen: list[dict[str, str]] = []

    async def authorize(request: web.Request) -> web.Response:
        query = dict(request.query)
        seen.append(query)
        location = URL(query["redirect_uri"]).update_query(
            code="good-browser-code", state=query.get("state", "")
        )
        raise web.HTTPFound(location=str(location))

    app = web.Application()
    app.router.add_get("/app/oauth/authorize", authorize)
    server = TestServer(app)
    await server.start_server()
    yield str(server.make_url("/app/oauth/authorize")), seen
    await server.close()


@pytest.fixture
async def console(
    authorize_server: tuple[str, list[dict[str, str]]],
    make_settings: Callable[..., Settings],
) -> AsyncIterator[TestClient[Any, Any]]:
    """The app, with the fake authorize page as the provider's."""
    settings = make_settings(infusionsoft_authorize_url=authorize_server[0])
    async with TestClient(TestServer(create_app(settings))) as client:
        yield client


def _origin(api: TestClient[Any, Any]) -> str:
    return str(api.make_url("")).rstrip("/")


def _secrets(org: dict[str, str]) -> tuple[str, str]:
    """(user secret, organization secret) from the fixture's Authorization header."""
    user_part, org_part = org["Authorization"].split(",")
    return user_part.split()[1], org_part.split()[1]


async def _sign_in(tab: Tab, origin: str, org: dict[str, str]) -> None:
    user_secret, org_secret = _secrets(org)
    await tab.goto(origin + "/ui/")
    await tab.page.fill("#org-secret", org_secret)
    await tab.page.fill("#user-secret", user_secret)
    await tab.page.click("#signin-button")
    await tab.page.wait_for_url("**/ui/instances")


async def _next_refresh(tab: Tab) -> None:
    """Until the page's live refresh has run once more."""
    before = await tab.page.inner_text("#live-status")
    await tab.wait_for(f"document.getElementById('live-status').innerText !== {before!r}")


async def _instance(api: TestClient[Any, Any], org: dict[str, str], name: str) -> dict[str, Any]:
    body = create_body()
    body["name"] = name
    resp = await api.post(f"{BASE}/instances", json=body, headers=org)
    assert resp.status == 200, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


async def _config(api: TestClient[Any, Any], org: dict[str, str], instance_id: int) -> Any:
    resp = await api.get(f"{BASE}/instances/{instance_id}", headers=org)
    assert resp.status == 200, await resp.text()
    return await resp.json()


def _add_delivery(
    database_url: str,
    instance_id: int,
    status: str,
    records: list[tuple[str, str, dict[str, Any]]],
    codes: tuple[int | None, ...] = (),
) -> str:
    """A delivery of ``records`` ((objectType, eventType, record)) with its events and attempts,
    as the poll and delivery workers leave them."""
    delivery_id = uuid.uuid4()
    now = datetime.now(UTC)
    events = [
        (uuid.uuid4(), object_type, event_type, record)
        for object_type, event_type, record in records
    ]
    body = {
        "message": {
            "eventId": str(delivery_id),
            "instanceId": instance_id,
            "elementKey": "infusionsoftrest",
            "events": [
                {
                    "eventId": str(event_id),
                    "eventType": event_type,
                    "objectType": object_type,
                    "objectId": str(record["id"]),
                }
                for event_id, object_type, event_type, record in events
            ],
            "raw": {object_type: [record] for _, object_type, _, record in events},
        }
    }
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO deliveries (id, instance_id, status, body, event_count, created_at,"
            " delivered_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (
                delivery_id,
                instance_id,
                status,
                json.dumps(body).encode(),
                len(events),
                now,
                now if status == "delivered" else None,
            ),
        )
        for attempt, code in enumerate(codes, 1):
            conn.execute(
                "INSERT INTO delivery_attempts"
                " (delivery_id, attempt, at, status_code, duration_ms, error, response_body)"
                " VALUES (%s, %s, %s, %s, 42, %s, %s)",
                (
                    delivery_id,
                    attempt,
                    now,
                    code,
                    None if code is not None and code < 300 else "http" if code else "timeout",
                    "ok" if code is not None and code < 300 else f"upstream {code}",
                ),
            )
        for n, (event_id, object_type, event_type, record) in enumerate(events):
            at = now - timedelta(seconds=n)
            conn.execute(
                "INSERT INTO events (id, instance_id, object_type, object_id, event_type,"
                " event_date, poll_date, delivery_id, record, created_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    event_id,
                    instance_id,
                    object_type,
                    str(record["id"]),
                    event_type,
                    at,
                    now,
                    delivery_id,
                    json.dumps(record),
                    now,
                ),
            )
    return str(delivery_id)


def _replay_jobs(database_url: str, instance_id: int) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT only_failed FROM replay_jobs WHERE instance_id = %s", (instance_id,)
        ).fetchall()


def _add_failed_delivery(database_url: str, instance_id: int) -> str:
    """One failed delivery with two attempts and its event, as the delivery worker leaves it."""
    delivery_id, event_id = uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC)
    body = json.dumps({"message": {"events": [{"eventId": str(event_id)}]}}).encode()
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO deliveries (id, instance_id, status, body, event_count, created_at)"
            " VALUES (%s, %s, 'failed', %s, 1, %s)",
            (delivery_id, instance_id, body, now),
        )
        for attempt, code in ((1, 500), (2, 503)):
            conn.execute(
                "INSERT INTO delivery_attempts"
                " (delivery_id, attempt, at, status_code, duration_ms, error, response_body)"
                " VALUES (%s, %s, %s, %s, 42, 'http_status', %s)",
                (delivery_id, attempt, now, code, f"<b>upstream {code}</b>"),
            )
        conn.execute(
            "INSERT INTO events (id, instance_id, object_type, object_id, event_type,"
            " event_date, poll_date, delivery_id, record, created_at)"
            " VALUES (%s, %s, 'contacts', '<script>x</script>', 'CREATED', %s, %s, %s, '{}', %s)",
            (event_id, instance_id, now, now, delivery_id, now),
        )
    return str(delivery_id)


# --- sign in, OAuth consent, create, retry, sign out ----------------------------------------


async def test_browser_sign_in_oauth_create_and_retry(
    tab: Tab,
    console: TestClient[Any, Any],
    authorize_server: tuple[str, list[dict[str, str]]],
    token_endpoint: tuple[FakeTokenEndpoint, str],
    service_urls: ServiceUrls,
    org: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    consents = authorize_server[1]
    page = tab
    api = console
    user_secret, org_secret = _secrets(org)
    origin = _origin(api)

    # Sign in: a wrong secret is refused, the right ones land on the instance list.
    await page.goto(origin + "/ui/")
    await page.page.fill("#org-secret", org_secret)
    await page.page.fill("#user-secret", "wrong")
    await page.eval("document.getElementById('signin-form').requestSubmit()")
    await page.wait_for("document.getElementById('message').innerText.includes('not accepted')")
    await page.page.fill("#user-secret", user_secret)
    await page.eval("document.getElementById('signin-form').requestSubmit()")
    await page.wait_for("location.pathname === '/ui/instances'")
    await page.wait_for("document.body.innerText.includes('No instances yet')")
    await page.screenshot("0-empty-list")

    # Step 1: OAuth credentials, then the provider's consent page and back.
    await page.goto(origin + "/ui/instances/new")
    assert await page.eval("document.getElementById('oauth-callback').value") == (
        origin + "/ui/oauth/callback"
    )
    await page.page.fill("#api-key", "client-browser")
    await page.page.fill("#api-secret", "client-secret-browser")
    await page.eval("document.getElementById('oauth-form').requestSubmit()")
    await page.wait_for("!document.getElementById('create-panel').hidden")
    assert await page.eval("location.pathname + location.search") == "/ui/oauth/callback"
    assert consents[0]["client_id"] == "client-browser"
    assert consents[0]["redirect_uri"] == origin + "/ui/oauth/callback"
    assert len(consents[0]["state"]) == 48
    await page.screenshot("1-create-form")
    names = await page.eval(
        "Array.from(document.querySelectorAll('input[data-resource]')).map(b => b.value)"
    )
    assert names == list(DEFAULT_POLLER_CONFIGURATION)

    # Step 2: events on, two resources, callback URL, interval, then Create Instance.
    await page.eval(
        "document.querySelectorAll('input[data-resource]').forEach(b =>"
        " b.checked = ['contacts', 'orders'].includes(b.value))"
    )
    await page.page.fill("#name", "Browser instance")
    await page.page.fill("#tags", "crm, ui")
    await page.page.fill("#signature-key", "sig-browser")
    await page.page.fill("#refresh-interval", "5")
    await page.page.fill("#event-callback", "http://127.0.0.1:9/events")  # private: refused
    await page.eval("document.getElementById('create-form').requestSubmit()")
    await page.wait_for(
        "document.getElementById('message').innerText"
        ".includes('configuration.event.notification.callback.url')"
    )
    assert (
        await page.eval("document.getElementById('event-callback').getAttribute('aria-invalid')")
        == "true"
    )
    await page.page.fill("#event-callback", "https://93.184.215.14/events")
    await page.eval("document.getElementById('create-form').requestSubmit()")
    await page.wait_for("!document.getElementById('result').hidden")
    token = await page.eval("document.getElementById('result-token').innerText")
    await page.screenshot("2-created")
    assert token

    resp = await api.get(f"{BASE}/instances", headers=org)
    [instance] = await resp.json()
    config = instance["configuration"]
    assert instance["name"] == "Browser instance"
    assert [t["name"] for t in instance["tags"]] == ["crm", "ui"]
    assert instance["eventsEnabled"] is True
    assert config["event.poller.refresh_interval"] == 5
    assert config["event.notification.callback.url"] == "https://93.184.215.14/events"
    assert config["oauth.callback.url"] == origin + "/ui/oauth/callback"
    assert config["event.poller.configuration"] == {
        name: DEFAULT_POLLER_CONFIGURATION[name] for name in ("contacts", "orders")
    }
    form = token_endpoint[0].requests[-1]["form"]
    assert form["code"] == "good-browser-code"
    assert form["redirect_uri"] == origin + "/ui/oauth/callback"
    # The pending OAuth form (with the client secret) is gone from the tab once used.
    assert await page.eval("sessionStorage.getItem('pollinator.console.pendingOAuth')") is None

    # The list shows the instance with its per-resource polling state.
    await page.goto(origin + "/ui/instances")
    await page.wait_for("document.body.innerText.includes('Browser instance')")
    text = await page.eval("document.getElementById('instances').innerText")
    await page.screenshot("3-list")
    assert "contacts" in text
    assert "orders" in text

    # The instance page: polling state, events, deliveries; retry a failed one.
    delivery_id = _add_failed_delivery(service_urls.database_url, instance["id"])
    await page.goto(f"{origin}/ui/instance?id={instance['id']}")
    await page.wait_for("document.querySelector('#deliveries button') !== null")
    assert "contacts" in await page.eval("document.getElementById('polling').innerText")
    events_text = await page.eval("document.getElementById('events').innerText")
    assert "<script>x</script>" in events_text  # shown as text, never run as markup
    deliveries_text = await page.eval("document.getElementById('deliveries').innerText")
    assert "HTTP 500" in deliveries_text
    assert "HTTP 503" in deliveries_text
    await page.screenshot("4-instance")
    # Replay a time range (POST …/deliveries/replay): the job is queued and followed.
    hour = timedelta(hours=1)
    now = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    await page.eval("document.getElementById('replay-panel').open = true")
    await page.page.fill("#replay-since", (now - hour).isoformat())
    await page.page.fill("#replay-until", (now + hour).isoformat())
    await page.page.select_option("#replay-status", "failed")
    await page.eval("document.getElementById('replay-form').requestSubmit()")
    await page.wait_for("document.getElementById('replay-result').innerText.includes('Replay')")
    jobs = _replay_jobs(service_urls.database_url, instance["id"])
    assert jobs == [(True,)]  # one job, failed deliveries only
    await page.eval("document.querySelector('#deliveries button').click()")
    await page.wait_for("document.getElementById('message').innerText.includes('queued')")
    resp = await api.get(f"{BASE}/instances/{instance['id']}/deliveries", headers=org)
    [delivery] = await resp.json()
    assert delivery["id"] == delivery_id
    assert delivery["status"] == "pending"

    await page.eval("document.getElementById('poll-now').click()")
    await page.wait_for("document.getElementById('message').innerText.includes('scheduled')")

    # Signing out forgets the secrets; the console then asks for them again.
    await page.eval("document.getElementById('sign-out').click()")
    await page.wait_for("location.pathname === '/ui/'")
    assert await page.eval("sessionStorage.getItem('pollinator.console.auth')") is None
    await page.goto(origin + "/ui/instances")
    await page.wait_for("location.pathname === '/ui/'")

    assert page.problems == []
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "/ui/oauth/callback" in logged  # the access log was captured
    for secret in (user_secret, org_secret, "client-secret-browser", "sig-browser", token):
        assert secret not in logged


# --- per-resource configuration on create, edit, events off/on, delete -----------------------

SINCE = "since=${gmtDate:yyyy-MM-dd'T'HH:mm:ss.SSS'Z'}"


async def test_create_with_per_resource_configuration_edit_toggle_and_delete(
    tab: Tab, console: TestClient[Any, Any], service_urls: ServiceUrls, org: dict[str, str]
) -> None:
    api, page = console, tab.page
    origin = _origin(api)
    await _sign_in(tab, origin, org)

    await page.goto(origin + "/ui/instances/new")
    await page.fill("#api-key", "client-cfg")
    await page.fill("#api-secret", "client-secret-cfg")
    await page.click("#authorize-button")
    await page.wait_for_selector("#create-panel:not([hidden])")
    await page.fill("#name", "Configured instance")
    await page.fill("#event-callback", "https://93.184.215.14/events")
    await page.fill("#signature-key", "sig-original")
    await page.click("#select-none")
    # contacts: another URL, a page size and a poll delay.
    await page.check("#resource-contacts")
    await page.click("li[data-resource-name='contacts'] summary")
    contacts_url = f"/contacts?{SINCE}&order=id&limit=200"
    await page.fill("#resource-contacts-url", contacts_url)
    await page.fill("#resource-contacts-pageSize", "200")
    await page.fill("#resource-contacts-pollDelay", "5")
    # tasks: a created-date zone and format (a bad one first), no filtering by updated date.
    await page.check("#resource-tasks")
    await page.click("li[data-resource-name='tasks'] summary")
    await page.fill("#resource-tasks-createdDateTimezone", "America/New_York")
    await page.fill("#resource-tasks-createdDateFormat", "yyyy-MM-dd HH:mm:ss qq")
    await page.uncheck("#resource-tasks-filterByUpdatedDate")
    # notes: a resource Pollinator has no default for.
    await page.fill("#new-resource", "notes")
    await page.click("#add-resource")
    await page.fill("#resource-notes-url", "/notes")
    await page.fill("#resource-notes-idField", "id")
    await page.fill("#resource-notes-updatedDateField", "last_updated")
    await page.fill("#resource-notes-createdCheckTolerance", "2")
    await page.click("#create-button")
    # The API names the bad format; the console marks that input (its <details> opened).
    bad = "configuration.event.poller.configuration.tasks.datesConfiguration.createdDateFormat"
    await tab.wait_for(f"document.getElementById('message').innerText.includes({bad!r})")
    assert await page.get_attribute("#resource-tasks-createdDateFormat", "aria-invalid") == "true"
    await page.fill("#resource-tasks-createdDateFormat", "yyyy-MM-dd HH:mm:ss")
    await page.click("#create-button")
    await page.wait_for_selector("#result:not([hidden])")

    [instance] = await (await api.get(f"{BASE}/instances", headers=org)).json()
    instance_id = instance["id"]
    tasks = DEFAULT_POLLER_CONFIGURATION["tasks"]
    assert instance["configuration"]["event.poller.configuration"] == {
        "contacts": {
            **DEFAULT_POLLER_CONFIGURATION["contacts"],
            "url": contacts_url,
            "pageSize": 200,
            "pollDelay": 5,
        },
        "tasks": {
            **tasks,
            "filterByUpdatedDate": False,
            "datesConfiguration": {
                **tasks["datesConfiguration"],
                "createdDateFormat": "yyyy-MM-dd HH:mm:ss",
                "createdDateTimezone": "America/New_York",
            },
        },
        "notes": {
            "url": "/notes",
            "idField": "id",
            "createdCheckTolerance": 2,
            "datesConfiguration": {"updatedDateField": "last_updated"},
        },
    }

    # Edit: the name and the contacts URL; the signature key, shown as ********, is kept.
    await page.click("#result-link")
    await page.wait_for_selector("#edit:not([disabled])")
    await page.click("#edit")
    assert await page.input_value("#edit-signature") == "********"
    assert await page.input_value("#edit-api-secret") == "********"
    assert await page.input_value("#edit-resource-contacts-url") == contacts_url
    assert await page.is_checked("#edit-resource-notes")
    assert not await page.is_checked("#edit-resource-orders")  # a default, offered unchecked
    await page.fill("#edit-name", "Renamed instance")
    await page.click("li[data-resource-name='contacts'] summary")
    await page.fill("#edit-resource-contacts-url", f"/contacts?{SINCE}&order=id")
    await page.fill("#edit-interval", "30")
    await _next_refresh(tab)  # a live refresh leaves the open form alone
    assert await page.input_value("#edit-name") == "Renamed instance"
    await tab.screenshot("console-edit")
    await page.click("#save-button")
    await tab.wait_for("document.getElementById('message').innerText.includes('Saved')")
    await page.wait_for_selector("#edit-section[hidden]", state="attached")
    assert "Renamed instance" in await page.inner_text("#title")
    after = await _config(api, org, instance_id)
    config = after["configuration"]
    assert after["name"] == "Renamed instance"
    assert config["event.poller.refresh_interval"] == 30
    resources = config["event.poller.configuration"]
    assert resources["contacts"]["url"] == f"/contacts?{SINCE}&order=id"
    assert resources["contacts"]["pageSize"] == 200  # what was not edited stays
    assert resources["tasks"] == instance["configuration"]["event.poller.configuration"]["tasks"]
    assert config["event.notification.signature.key"] == "********"
    with psycopg.connect(service_urls.database_url) as conn:
        row = conn.execute("SELECT secrets FROM instances WHERE id = %s", (instance_id,)).fetchone()
    assert row is not None
    secrets = SecretBox(SECRET_KEY).open(row[0])
    assert secrets["event.notification.signature.key"] == "sig-original"
    assert secrets["oauth.api.secret"] == "client-secret-cfg"

    # Events off, then on again.
    await page.click("#toggle-events")
    await tab.wait_for("document.getElementById('toggle-events').innerText === 'Turn events on'")
    assert (await _config(api, org, instance_id))["eventsEnabled"] is False
    assert await page.is_disabled("#poll-now")
    await page.click("#toggle-events")
    await tab.wait_for("document.getElementById('toggle-events').innerText === 'Turn events off'")
    assert (await _config(api, org, instance_id))["eventsEnabled"] is True

    # Delete asks first; Cancel keeps the instance, confirming deletes it.
    await page.click("#delete")
    assert await page.is_visible("#delete-dialog")
    await page.click("#delete-cancel")
    assert not await page.is_visible("#delete-dialog")
    assert (await api.get(f"{BASE}/instances/{instance_id}", headers=org)).status == 200
    await page.click("#delete")
    await page.click("#delete-confirm")
    await page.wait_for_url("**/ui/instances")
    await tab.wait_for("document.getElementById('message').innerText.includes('was deleted')")
    await tab.wait_for("document.body.innerText.includes('No instances yet')")
    assert (await api.get(f"{BASE}/instances/{instance_id}", headers=org)).status == 404
    assert tab.problems == []


# --- events, deliveries, the event log, the failing badge, live refresh, phones -------------


async def test_payloads_event_log_failing_badge_live_refresh_and_phone_layout(
    tab: Tab, console: TestClient[Any, Any], service_urls: ServiceUrls, org: dict[str, str]
) -> None:
    api, page = console, tab.page
    db = service_urls.database_url
    origin = _origin(api)
    crm = await _instance(api, org, "CRM sync")
    shop = await _instance(api, org, "Shop orders")
    contact = {"id": 4711, "email": "ada@example.com", "given_name": "Ada", "tag_ids": [3, 9]}
    _add_delivery(db, crm["id"], "delivered", [("contacts", "CREATED", contact)], (200,))
    failed_id = _add_delivery(
        db,
        crm["id"],
        "failed",
        [("contacts", "UPDATED", {**contact, "given_name": "Ada L."})],
        (500, 503, None),
    )
    _add_delivery(db, shop["id"], "delivered", [("orders", "CREATED", {"id": 88, "total": 9.5})])
    await _sign_in(tab, origin, org)

    # The list flags the instance with a failed delivery, and only that one.
    await page.wait_for_selector("#instances a.failed-deliveries")
    badges = await page.eval_on_selector_all(
        "#instances table.cards > tbody > tr",
        "rows => rows.map(r => [r.querySelector('a').innerText,"
        " (r.querySelector('.failed-deliveries') || {}).innerText || null])",
    )
    assert badges == [["CRM sync", "1 failed delivery"], ["Shop orders", None]]

    # Live refresh: a delivery failing now shows up without a reload...
    _add_delivery(db, shop["id"], "failed", [("orders", "UPDATED", {"id": 88})], (502,))
    await tab.wait_for("document.querySelectorAll('#instances a.failed-deliveries').length === 2")
    # ...and a hidden tab stops asking the API until it is visible again.
    await tab.eval(SET_VISIBILITY % "hidden")
    await tab.wait_for("window.__inFlight === 0")
    calls = await tab.eval("window.__apiCalls")
    await asyncio.sleep(6.5)  # longer than one refresh period (5 s)
    assert await tab.eval("window.__apiCalls") == calls
    assert "paused" in await page.inner_text("#live-status")
    await tab.eval(SET_VISIBILITY % "visible")
    await tab.wait_for(f"window.__apiCalls > {calls}")
    await tab.wait_for("document.getElementById('live-status').innerText.includes('refreshed at')")
    await tab.screenshot("console-list")

    # The instance page: an event's raw record and a delivery's body.
    await page.goto(f"{origin}/ui/instance?id={crm['id']}")
    await page.wait_for_selector("#events details.json")
    raw = page.locator("#events tbody tr", has_text="UPDATED").locator("details.json")
    await raw.locator("summary").click()
    shown = json.loads(await raw.locator("pre").inner_text())
    assert shown == {**contact, "given_name": "Ada L."}
    body = page.locator("#deliveries tbody tr", has_text="failed").locator("details.json")
    await body.locator("summary").click()
    sent = json.loads(await body.locator("pre").inner_text())
    assert sent["message"]["eventId"] == failed_id
    assert sent["message"]["raw"]["contacts"][0]["given_name"] == "Ada L."
    # A live refresh keeps what the user opened.
    await _next_refresh(tab)
    assert await raw.get_attribute("open") == ""
    await tab.screenshot("console-instance-desktop")

    # The organization-wide event log, then filtered by object type and by instance.
    await page.goto(origin + "/ui/events")
    await tab.wait_for("document.querySelectorAll('#events tbody tr').length === 4")
    await page.fill("#filter-object-type", "orders")
    await page.click("#apply-filters")
    await tab.wait_for("document.querySelectorAll('#events tbody tr').length === 2")
    assert "objectType=orders" in page.url
    rows = await page.inner_text("#events tbody")
    assert "Shop orders" in rows
    assert "CRM sync" not in rows
    await page.fill("#filter-object-type", "")
    await page.select_option("#filter-instance", str(crm["id"]))
    await page.select_option("#filter-event-type", "UPDATED")
    await page.click("#apply-filters")
    await tab.wait_for("document.querySelectorAll('#events tbody tr').length === 1")
    only = await page.inner_text("#events tbody")
    assert "CRM sync" in only
    assert "UPDATED" in only
    await tab.screenshot("console-event-log")
    # A live refresh shows the applied filters, not what is being typed.
    await page.fill("#filter-object-type", "orders")
    await _next_refresh(tab)
    assert await page.inner_text("#events tbody") == only
    # The filters live in the address: a reload (or a shared link) shows the same view.
    await page.reload()
    await tab.wait_for("document.querySelectorAll('#events tbody tr').length === 1")
    assert await page.input_value("#filter-instance") == str(crm["id"])

    # A phone: nothing is wider than the screen, on any page.
    await page.set_viewport_size(PHONE)
    for path in (
        "/ui/",
        "/ui/instances",
        f"/ui/instance?id={crm['id']}",
        "/ui/events",
        "/ui/instances/new",
    ):
        await page.goto(origin + path)
        await page.wait_for_load_state("networkidle")
        if path.startswith("/ui/instance?"):
            await page.wait_for_selector("#deliveries details.json")
            for details in await page.query_selector_all("details.json"):
                await details.evaluate("d => d.open = true")
            await page.click("#edit")  # the edit form, every resource's settings open
            for details in await page.query_selector_all("details.resource-config"):
                await details.evaluate("d => d.open = true")
            await tab.no_horizontal_scroll()
            await page.click("#cancel-edit")
            for details in await page.query_selector_all("details.json"):
                await details.evaluate("d => d.open = false")
            await tab.screenshot("console-instance-phone")
        else:
            await tab.screenshot("phone" + path.replace("/", "-").rstrip("-"))
        await tab.no_horizontal_scroll()
    assert tab.problems == []
