"""The web console at ``/ui/`` over real HTTP against the real app (SPEC §3 "Web console").

The console is static pages over the public JSON API, so most checks are about what the
server serves: pages, security headers, assets, ``/ui/defaults.json``, 404s, and that no
page can carry a secret. The last test drives headless Chromium (over the DevTools protocol,
with aiohttp's WebSocket client) through sign-in, OAuth consent, "Create Instance", the
instance page and a retry; it is skipped when no Chromium is installed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from app.api.server import create_app
from app.api.ui import PAGES, STATIC_FILES
from app.domain.pollconfig import DEFAULT_POLLER_CONFIGURATION
from app.settings import Settings
from tests.conftest import SECRET_KEY, ServiceUrls
from tests.integration.conftest import FakeTokenEndpoint

Client = TestClient[Any, Any]
BASE = "/elements/api-v2"
PAGE_PATHS = ["/ui" + path for path in PAGES]


class _Refs(HTMLParser):
    """Collects what a page loads and anything inline a strict CSP would block."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.links: list[str] = []
        self.inline_scripts = 0
        self.inline_styles = 0
        self.handlers: list[str] = []
        self.named_inputs: list[str] = []
        self.labels_for: set[str] = set()
        self.input_ids: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script":
            if a.get("src"):
                self.scripts.append(str(a["src"]))
            else:
                self.inline_scripts += 1
        if tag == "link" and a.get("href"):
            self.links.append(str(a["href"]))
        if tag == "style" or "style" in a:
            self.inline_styles += 1
        self.handlers += [k for k in a if k.startswith("on")]
        if tag in {"input", "select", "textarea"}:
            if "name" in a:
                self.named_inputs.append(str(a["name"]))
            if a.get("id") and a.get("type") != "hidden":
                self.input_ids.append(str(a["id"]))
        if tag == "label" and a.get("for"):
            self.labels_for.add(str(a["for"]))


def _refs(html: str) -> _Refs:
    parser = _Refs()
    parser.feed(html)
    return parser


def _assert_security_headers(resp: aiohttp.ClientResponse) -> None:
    csp = resp.headers.get("Content-Security-Policy", "")
    directives = {d.strip().split(" ", 1)[0]: d.strip() for d in csp.split(";") if d.strip()}
    assert directives.get("default-src") == "default-src 'self'", csp
    assert directives.get("script-src") == "script-src 'self'", csp
    assert directives.get("frame-ancestors") == "frame-ancestors 'none'", csp
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert "http" not in csp  # no other origin is allowed anything
    assert resp.headers.get("X-Frame-Options") == "DENY"
    assert resp.headers.get("Referrer-Policy") == "no-referrer"
    assert resp.headers.get("X-Content-Type-Options") == "nosniff"


@pytest.mark.parametrize("path", PAGE_PATHS)
async def test_pages_are_served_with_strict_headers(api: Client, path: str) -> None:
    resp = await api.get(path)
    assert resp.status == 200, path
    assert resp.content_type == "text/html"
    assert resp.charset == "utf-8"
    _assert_security_headers(resp)
    assert resp.headers.get("Cache-Control") == "no-store"
    html = await resp.text()
    assert html.startswith("<!doctype html>")
    refs = _refs(html)
    # A strict CSP would block inline code; there is none to block.
    assert refs.inline_scripts == 0
    assert refs.inline_styles == 0
    assert refs.handlers == []
    assert refs.scripts[0] == "/ui/static/console.js"
    # No form field has a name, so even a submit without JavaScript sends no secret anywhere.
    assert refs.named_inputs == []
    # Every form field has a label.
    assert set(refs.input_ids) <= refs.labels_for, set(refs.input_ids) - refs.labels_for


async def test_every_referenced_asset_is_served_with_its_type(api: Client) -> None:
    referenced: set[str] = set()
    for path in PAGE_PATHS:
        refs = _refs(await (await api.get(path)).text())
        referenced |= set(refs.scripts) | set(refs.links)
    assert all(ref.startswith("/ui/static/") for ref in referenced), referenced
    assert referenced == {"/ui/static/" + name for name in STATIC_FILES}
    expected = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for ref in sorted(referenced):
        resp = await api.get(ref)
        assert resp.status == 200, ref
        assert resp.content_type == expected[Path(ref).suffix], ref
        _assert_security_headers(resp)
        body = await resp.text()
        assert body.strip()
        # Self-contained: nothing loaded from another origin (no CDN, no web fonts).
        assert "//cdn" not in body
        assert "@import" not in body
        assert "fonts.g" not in body
        if ref.endswith(".js"):
            assert "innerHTML" not in body
            assert "eval(" not in body


async def test_defaults_json_lists_the_keap_resources(api: Client) -> None:
    resp = await api.get("/ui/defaults.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    _assert_security_headers(resp)
    data = await resp.json()
    config = data["event.poller.configuration"]
    assert list(config) == list(DEFAULT_POLLER_CONFIGURATION)
    assert {"contacts", "opportunities", "orders", "tasks"} <= set(config)
    assert config == json.loads(json.dumps(DEFAULT_POLLER_CONFIGURATION))
    assert data["refreshInterval"] == 15
    assert data["minRefreshInterval"] == 1.0  # the test settings' minimum


async def test_ui_redirects_to_the_sign_in_page(api: Client) -> None:
    resp = await api.get("/ui", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "/ui/"


@pytest.mark.parametrize(
    "path",
    [
        "/ui/nope",
        "/ui/instances/nope",
        "/ui/static/nope.js",
        "/ui/static/__init__.py",
        "/ui/static/404.html",
        "/ui/static/%2e%2e/__init__.py",
        "/ui/static/..%2f__init__.py",
        "/ui/index.html",
    ],
)
async def test_unknown_ui_paths_are_404(api: Client, path: str) -> None:
    resp = await api.get(path)
    assert resp.status == 404, path
    assert resp.content_type == "text/html"
    _assert_security_headers(resp)
    body = await resp.text()
    assert "Not found" in body
    assert "add_ui_routes" not in body
    assert "import" not in body


async def test_api_routes_are_unaffected(api: Client, org: dict[str, str]) -> None:
    resp = await api.get(f"{BASE}/instances", headers=org)
    assert resp.status == 200
    assert "Content-Security-Policy" not in resp.headers
    assert (await api.get(f"{BASE}/nope")).content_type == "application/json"
    openapi = await (await api.get("/openapi.json")).json()
    assert not any(path.startswith("/ui") for path in openapi["paths"])


async def test_no_page_or_asset_embeds_a_secret(api: Client, org: dict[str, str]) -> None:
    user_secret, org_secret = _secrets(org)
    paths = [*PAGE_PATHS, "/ui/defaults.json", *("/ui/static/" + n for n in STATIC_FILES)]
    for path in paths:
        anonymous = await (await api.get(path)).read()
        signed_in = await (await api.get(path, headers=org)).read()
        assert anonymous == signed_in, path  # nothing depends on who asks
        for secret in (user_secret, org_secret, SECRET_KEY):
            assert secret.encode() not in anonymous, path


def _secrets(org: dict[str, str]) -> tuple[str, str]:
    """(user secret, organization secret) from the fixture's Authorization header."""
    user_part, org_part = org["Authorization"].split(",")
    return user_part.split()[1], org_part.split()[1]


# --- headless Chromium ---------------------------------------------------------------------

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _browser() -> str | None:
    explicit = os.environ.get("POLLINATOR_TEST_BROWSER")
    if explicit:
        return explicit
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


class Page:
    """Just enough of the Chrome DevTools protocol to drive one tab."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.problems: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            future = self.waiting.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)
            method, params = data.get("method"), data.get("params", {})
            if method == "Runtime.exceptionThrown":
                self.problems.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                entry = params["entry"]
                if entry.get("source") != "network":  # 4xx answers the test asks for
                    self.problems.append(f"{entry.get('source')}: {entry.get('text', '')[:500]}")
            elif method == "Runtime.consoleAPICalled" and params["type"] == "error":
                self.problems.append(json.dumps(params["args"])[:500])

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[self.next_id] = future
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        answer = await asyncio.wait_for(future, 15)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def eval(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        """Until ``expression`` is truthy (navigations in between are fine)."""
        deadline = asyncio.get_running_loop().time() + timeout
        last: Any = None
        while asyncio.get_running_loop().time() < deadline:
            try:
                last = await self.eval(expression)
                if last:
                    return last
            except RuntimeError as exc:  # e.g. the context went away while navigating
                last = exc
            await asyncio.sleep(0.1)
        url = await self.eval("location.href")
        text = await self.eval("document.body ? document.body.innerText : ''")
        raise AssertionError(f"timed out waiting for {expression!r} ({last!r}) at {url}: {text}")

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'")

    async def fill(self, element_id: str, value: str) -> None:
        await self.eval(
            f"document.getElementById({json.dumps(element_id)}).value = {json.dumps(value)}"
        )

    async def screenshot(self, name: str) -> None:
        """Saved only when ``POLLINATOR_UI_SCREENSHOTS`` names a directory (for a human)."""
        folder = os.environ.get("POLLINATOR_UI_SCREENSHOTS")
        if not folder:
            return
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        (Path(folder) / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))


@pytest.fixture
async def browser_page() -> AsyncIterator[Page]:
    binary = _browser()
    if binary is None:
        pytest.skip("no Chromium/Chrome on this machine (set POLLINATOR_TEST_BROWSER)")
    with tempfile.TemporaryDirectory(
        prefix="pollinator-ui-", ignore_cleanup_errors=True
    ) as profile:
        proc = await asyncio.create_subprocess_exec(
            binary,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # its helpers share the group we end below
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            for _ in range(300):
                if port_file.exists() and port_file.read_text().strip():
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.skip(f"{binary} did not start a DevTools endpoint")
            port = port_file.read_text().split()[0]
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                    targets = await resp.json()
                ws_url = next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"]
                async with http.ws_connect(ws_url, max_msg_size=64 * 1024 * 1024) as ws:
                    page = Page(ws)
                    for domain in ("Page", "Runtime", "Log"):
                        await page.send(f"{domain}.enable")
                    try:
                        yield page
                    finally:
                        await ws.close()
                        await page.reader
        finally:
            await _stop_browser(proc)


async def _stop_browser(proc: asyncio.subprocess.Process) -> None:
    """End the browser this fixture started, then any helper left in its process group."""
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    await asyncio.sleep(0.2)  # let the helpers' last writes to the profile finish


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


async def test_browser_sign_in_oauth_create_and_retry(
    browser_page: Page,
    authorize_server: tuple[str, list[dict[str, str]]],
    make_settings: Callable[..., Settings],
    token_endpoint: tuple[FakeTokenEndpoint, str],
    service_urls: ServiceUrls,
    org: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    authorize_url, consents = authorize_server
    settings = make_settings(infusionsoft_authorize_url=authorize_url)
    page = browser_page
    user_secret, org_secret = _secrets(org)
    async with TestClient(TestServer(create_app(settings))) as api:
        origin = str(api.make_url("")).rstrip("/")

        # Sign in: a wrong secret is refused, the right ones land on the instance list.
        await page.goto(origin + "/ui/")
        await page.fill("org-secret", org_secret)
        await page.fill("user-secret", "wrong")
        await page.eval("document.getElementById('signin-form').requestSubmit()")
        await page.wait_for("document.getElementById('message').innerText.includes('not accepted')")
        await page.fill("user-secret", user_secret)
        await page.eval("document.getElementById('signin-form').requestSubmit()")
        await page.wait_for("location.pathname === '/ui/instances'")
        await page.wait_for("document.body.innerText.includes('No instances yet')")
        await page.screenshot("0-empty-list")

        # Step 1: OAuth credentials, then the provider's consent page and back.
        await page.goto(origin + "/ui/instances/new")
        assert await page.eval("document.getElementById('oauth-callback').value") == (
            origin + "/ui/oauth/callback"
        )
        await page.fill("api-key", "client-browser")
        await page.fill("api-secret", "client-secret-browser")
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
        await page.fill("name", "Browser instance")
        await page.fill("tags", "crm, ui")
        await page.fill("signature-key", "sig-browser")
        await page.fill("refresh-interval", "5")
        await page.fill("event-callback", "http://127.0.0.1:9/events")  # private: refused
        await page.eval("document.getElementById('create-form').requestSubmit()")
        await page.wait_for(
            "document.getElementById('message').innerText"
            ".includes('configuration.event.notification.callback.url')"
        )
        assert (
            await page.eval(
                "document.getElementById('event-callback').getAttribute('aria-invalid')"
            )
            == "true"
        )
        await page.fill("event-callback", "https://93.184.215.14/events")
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
