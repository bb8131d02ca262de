"""One callback POST (``post_callback``): the error class of each network failure and the
1 KB cap on the answer kept, against local servers (no database)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer

from app.services import delivery
from app.services.delivery import MAX_RESPONSE_CHARS, post_callback
from app.services.guarded_http import callback_session

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """``await serve(handler)`` -> the URL of a local HTTP server answering with it."""
    servers: list[TestServer] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        server = TestServer(app)
        await server.start_server()
        servers.append(server)
        return str(server.make_url("/events"))

    yield start
    for server in servers:
        await server.close()


async def _post(url: str, session: aiohttp.ClientSession | None = None) -> delivery.AttemptResult:
    http = session or callback_session(True)
    try:
        return await post_callback(http, url, b'{"message":{}}', {}, allow_private=True)
    finally:
        await http.close()


async def test_an_answer_slower_than_the_timeout_is_a_timeout(
    serve: Callable[[Handler], Awaitable[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="too late")

    url = await serve(hang)
    monkeypatch.setattr(delivery, "TIMEOUT_S", 0.2)
    try:
        result = await _post(url)
    finally:
        release.set()
    assert result.error == "timeout"
    assert result.status_code is None
    assert not result.ok


class _NoSuchHost(AbstractResolver):
    """DNS that knows no name (what a typo in a callback host gets)."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        raise OSError(socket.EAI_NONAME, "Name or service not known")

    async def close(self) -> None:
        return None


async def test_a_name_that_does_not_resolve_is_a_dns_error() -> None:
    result = await _post(
        "http://callbacks.example.invalid/events",
        callback_session(True, resolver=_NoSuchHost()),
    )
    assert result.error == "dns"
    assert result.status_code is None


async def test_a_failed_handshake_is_a_tls_error(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="plain http")

    url = await serve(plain)  # an https:// URL on a server that speaks plain HTTP
    result = await _post(url.replace("http://", "https://", 1))
    assert result.error == "tls"
    assert result.status_code is None


async def test_a_refused_connection_is_a_connection_error(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = await _post(f"http://127.0.0.1:{port}/events")
    assert result.error == "connection"


@pytest.mark.parametrize("char", ["x", "é"])
async def test_the_kept_answer_is_capped_at_1k_characters(
    serve: Callable[[Handler], Awaitable[str]], char: str
) -> None:
    answer = char * 5000 + "END"

    async def verbose(request: web.Request) -> web.Response:
        return web.Response(status=500, text=answer)

    result: Any = await _post(await serve(verbose))
    assert MAX_RESPONSE_CHARS == 1024
    assert result.status_code == 500
    assert result.error == "http"
    assert result.response_body == answer[:1024]
