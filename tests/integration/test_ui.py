"""The web console at ``/ui/`` over real HTTP against the real app (SPEC §3 "Web console").

The console is static pages over the public JSON API, so these checks are about what the
server serves: pages, security headers, assets, ``/ui/defaults.json``, 404s, and that no
page can carry a secret. What a browser does with them is in ``test_console_browser.py``.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from app.api.ui import PAGES, STATIC_FILES
from app.domain.pollconfig import DEFAULT_POLLER_CONFIGURATION
from tests.conftest import SECRET_KEY

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
