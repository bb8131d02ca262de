"""The web console at ``/ui/`` (SPEC §3 "Web console").

A thin client over the public JSON API: the server only serves fixed pages (each a
``<main>`` in static/ inside the one shared ``layout.html``, assembled once), scripts,
``/ui/defaults.json`` and one console-only read, ``/ui/api/instances`` (see
:mod:`app.api.ui.overview`). The browser keeps the organization and user secrets in
``sessionStorage`` and sends them in the ``Authorization`` header of its ``fetch`` calls, so
they never appear in a URL, a server log or a server-side session. Every response under
``/ui/`` carries a strict Content-Security-Policy (no inline script, nothing but this
origin), ``X-Frame-Options: DENY`` and ``Referrer-Policy: no-referrer``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from string import Template

from aiohttp import web

from app.api.auth import CONSOLE_API, principal_of
from app.api.context import CTX
from app.api.routes import BASE, ctx_of, paging
from app.api.ui.overview import instance_page
from app.domain.instanceconfig import DEFAULT_REFRESH_MINUTES
from app.domain.pollconfig import CONFIGURATION_KEY, DEFAULT_POLLER_CONFIGURATION

__all__ = ["PAGES", "SECURITY_HEADERS", "STATIC_FILES", "Page", "add_ui_routes"]

PREFIX = "/ui"
STATIC_DIR = Path(__file__).resolve().parent / "static"

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@dataclass(frozen=True)
class Page:
    """A console page: the ``<main>`` of ``body`` (a file in static/) in ``layout.html``.

    Every page shares the layout (head, stylesheet, header); a page with scripts loads
    ``console.js`` (the shared helpers) before its own. ``signed_in`` pages show the
    navigation and the sign-out button.
    """

    body: str
    title: str
    scripts: tuple[str, ...] = ()
    signed_in: bool = True


# Path under /ui -> page.
PAGES: dict[str, Page] = {
    "/": Page("index.html", "Sign in", ("signin.js",), signed_in=False),
    "/instances": Page("instances.html", "Instances", ("instances.js",)),
    "/instances/new": Page("new.html", "New instance", ("new.js",)),
    "/oauth/callback": Page("callback.html", "Create instance", ("resources.js", "callback.js")),
    "/instance": Page("instance.html", "Instance", ("resources.js", "instance.js")),
    "/events": Page("events.html", "Event log", ("events.js",)),
}
NOT_FOUND = Page("404.html", "Not found", signed_in=False)

# The only files served from /ui/static/ (a fixed list: nothing else in the package leaks).
STATIC_FILES: dict[str, str] = {
    "console.css": "text/css",
    "console.js": "text/javascript",
    "signin.js": "text/javascript",
    "instances.js": "text/javascript",
    "new.js": "text/javascript",
    "callback.js": "text/javascript",
    "instance.js": "text/javascript",
    "resources.js": "text/javascript",
    "events.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}


@cache
def _read(name: str) -> bytes:
    return (STATIC_DIR / name).read_bytes()


@cache
def _render(page: Page) -> bytes:
    scripts = ("console.js", *page.scripts) if page.scripts else ()
    return (
        Template(_read("layout.html").decode())
        .substitute(
            title=page.title,
            scripts="".join(
                f'<script src="{PREFIX}/static/{s}" defer></script>\n' for s in scripts
            ),
            header=_read("header.html" if page.signed_in else "header-signed-out.html").decode(),
            main=_read(page.body).decode(),
        )
        .encode()
    )


def _respond(
    body: bytes, content_type: str, *, status: int = 200, cache_control: str = "no-store"
) -> web.Response:
    response = web.Response(body=body, status=status, content_type=content_type, charset="utf-8")
    response.headers.update(SECURITY_HEADERS)
    response.headers["Cache-Control"] = cache_control
    return response


def _page_handler(page: Page) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(_: web.Request) -> web.Response:
        return _respond(_render(page), "text/html")

    return handler


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    content_type = STATIC_FILES.get(name)
    if content_type is None:
        return await not_found(request)
    return _respond(_read(name), content_type, cache_control="no-cache")


async def defaults(request: web.Request) -> web.Response:
    """What the create form offers: the Keap resources (as the poller would use them)."""
    minimum = request.app[CTX].settings.min_refresh_minutes
    body = {
        "apiBase": BASE,
        "refreshInterval": max(DEFAULT_REFRESH_MINUTES, minimum),
        "minRefreshInterval": minimum,
        CONFIGURATION_KEY: DEFAULT_POLLER_CONFIGURATION,
    }
    response = web.json_response(body)
    response.headers.update(SECURITY_HEADERS)
    response.headers["Cache-Control"] = "no-cache"
    return response


async def instances(request: web.Request) -> web.Response:
    """The instance list page's data: SPEC instances plus ``polling`` and ``failedDeliveries``."""
    page, page_size = paging(request)
    items, total = await instance_page(
        ctx_of(request), principal_of(request).organization_id, page, page_size
    )
    response = web.json_response(items)
    response.headers.update(SECURITY_HEADERS)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Elements-Total-Count"] = str(total)
    return response


async def not_found(_: web.Request) -> web.Response:
    return _respond(_render(NOT_FOUND), "text/html", status=404)


async def to_index(_: web.Request) -> web.Response:
    raise web.HTTPFound(PREFIX + "/")


def add_ui_routes(app: web.Application) -> None:
    """Mount the console under ``/ui/``; unknown ``/ui/...`` paths answer an HTML 404."""
    app.router.add_get(PREFIX, to_index)
    for path, page in PAGES.items():
        app.router.add_get(PREFIX + path, _page_handler(page))
    app.router.add_get(PREFIX + "/defaults.json", defaults)
    app.router.add_get(CONSOLE_API + "/instances", instances)
    app.router.add_get(PREFIX + "/static/{name}", static_file)
    app.router.add_get(PREFIX + "/{tail:.*}", not_found)
