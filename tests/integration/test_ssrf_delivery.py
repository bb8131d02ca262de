"""The SSRF guard over real HTTP: a counting receiver on 127.0.0.1 must never be reached.

Private callbacks are off here (``POLLINATOR_ALLOW_PRIVATE_CALLBACKS=false``). Where a test
needs a *name* to lead to the receiver, a scripted resolver answers 127.0.0.1 for it, so the
guard is exercised with its real connector while nothing leaves this machine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from app.services.delivery import deliver
from app.services.guarded_http import (
    BlockedAddress,
    GuardedConnector,
    callback_session,
    check_callback_host,
)
from tests.conftest import ServiceUrls
from tests.integration.conftest import create_body
from tests.integration.test_delivery import World, _world
from tests.ssrf_cases import LOOPBACK_SPELLINGS, UNICODE_LOOPBACK, StubResolver

BASE = "/elements/api-v2"
CALLBACK = "event.notification.callback.url"


@dataclasses.dataclass
class CountingReceiver:
    """Answers 200 to any request on 127.0.0.1 and remembers each one."""

    port: int = 0
    requests: list[str] = dataclasses.field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(f"{request.method} {request.url}")
        return web.Response(text="reached")


@pytest.fixture
async def receiver() -> AsyncIterator[CountingReceiver]:
    counting = CountingReceiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", counting.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    assert server.port is not None
    counting.port = server.port
    yield counting
    await server.close()


@pytest.fixture
async def guarded(service_urls: ServiceUrls) -> AsyncIterator[World]:
    async for world in _world(service_urls, allow_private=False):
        yield world


async def _deliver_once(world: World, url: str, http: aiohttp.ClientSession | None = None) -> Any:
    if http is not None:
        world.deps = dataclasses.replace(world.deps, http=http)
    delivery_id = await world.delivery(await world.instance(url))
    assert (await deliver(world.deps, delivery_id)).outcome == "pending"
    [attempt] = world.attempts(delivery_id)
    return attempt


@pytest.mark.parametrize("spelling", LOOPBACK_SPELLINGS)
async def test_loopback_spellings_never_reach_the_receiver_at_delivery(
    guarded: World, receiver: CountingReceiver, spelling: str
) -> None:
    attempt = await _deliver_once(guarded, f"http://{spelling}:{receiver.port}/e")
    assert attempt["error"] == "ssrf_blocked", attempt
    assert attempt["status_code"] is None
    assert receiver.requests == []


async def test_percent_encoded_host_is_a_failed_attempt(
    guarded: World, receiver: CountingReceiver
) -> None:
    attempt = await _deliver_once(guarded, f"http://%31%32%37.0.0.1:{receiver.port}/e")
    assert attempt["error"] == "ssrf_blocked", attempt
    assert receiver.requests == []


@pytest.mark.parametrize("spelling", [*LOOPBACK_SPELLINGS, "%31%32%37.0.0.1"])
async def test_create_refuses_every_spelling(
    api: TestClient[Any, Any], org: dict[str, str], spelling: str
) -> None:
    body = create_body(**{CALLBACK: f"http://{spelling}:8091/e"})
    resp = await api.post(f"{BASE}/instances", json=body, headers=org)
    assert resp.status == 400, spelling
    assert CALLBACK in (await resp.json())["message"]


@pytest.mark.parametrize("spelling", UNICODE_LOOPBACK)
async def test_patch_refuses_unicode_spellings(
    api: TestClient[Any, Any], org: dict[str, str], spelling: str
) -> None:
    resp = await api.post(f"{BASE}/instances", json=create_body(), headers=org)
    assert resp.status == 200, await resp.text()
    url = f"{BASE}/instances/{(await resp.json())['id']}"
    resp = await api.patch(
        url, json={"configuration": {CALLBACK: f"http://{spelling}:8091/e"}}, headers=org
    )
    assert resp.status == 400, spelling
    assert CALLBACK in (await resp.json())["message"]
    stored = await (await api.get(url, headers=org)).json()
    assert stored["configuration"][CALLBACK] == create_body()["configuration"][CALLBACK]


async def test_name_resolving_to_loopback_is_blocked_at_delivery(
    guarded: World, receiver: CountingReceiver
) -> None:
    dns = StubResolver(["127.0.0.1"])
    async with callback_session(False, resolver=dns) as http:
        attempt = await _deliver_once(guarded, f"http://cb.example.com:{receiver.port}/e", http)
    assert attempt["error"] == "ssrf_blocked", attempt
    assert "resolves only to private addresses" in attempt["error_detail"]  # not the peer check
    assert dns.asked == ["cb.example.com"]
    assert receiver.requests == []


async def test_dns_rebinding_between_check_and_connect(
    guarded: World, receiver: CountingReceiver
) -> None:
    # Public when the callback URL is checked at create time, loopback when delivering.
    dns = StubResolver(["93.184.215.14"], ["127.0.0.1"])
    url = f"http://rebind.example.com:{receiver.port}/e"
    await check_callback_host(url, allow_private=False, resolver=dns)
    async with callback_session(False, resolver=dns) as http:
        attempt = await _deliver_once(guarded, url, http)
    assert attempt["error"] == "ssrf_blocked", attempt
    assert "resolves only to private addresses" in attempt["error_detail"]
    assert dns.asked == ["rebind.example.com"] * 2  # delivery resolved again (no cache)
    assert receiver.requests == []


# Each case reaches the receiver through a path where no check before the connection
# sees 127.0.0.1: a resolver that lies, happy eyeballs over two families, an IP literal
# the client connects to without resolving, the connection to a proxy.
PEER_CASES = {
    "lying resolver": ("http://cb.example.com:{port}/e", None, ["127.0.0.1"]),
    "happy eyeballs": ("http://cb.example.com:{port}/e", None, ["::1", "127.0.0.1"]),
    "unicode literal": ("http://127\u30020\u30020\u30021:{port}/e", None, ["93.184.215.14"]),
    "proxy": ("http://93.184.215.14/e", "http://proxy.example.com:{port}", ["127.0.0.1"]),
}


@pytest.mark.parametrize("guard", [True, False], ids=["guarded", "control"])
@pytest.mark.parametrize("case", list(PEER_CASES))
async def test_peer_check_alone_stops_what_the_earlier_layers_miss(
    receiver: CountingReceiver, case: str, guard: bool
) -> None:
    url, proxy, answer = PEER_CASES[case]
    dns = StubResolver(answer)
    connector = (
        GuardedConnector(resolver=dns, use_dns_cache=False)
        if guard
        else aiohttp.TCPConnector(resolver=dns, use_dns_cache=False)
    )
    async with aiohttp.ClientSession(connector=connector) as http:
        post = http.post(
            url.format(port=receiver.port),
            data=b"{}",
            proxy=proxy.format(port=receiver.port) if proxy else None,
        )
        if guard:
            with pytest.raises(BlockedAddress):
                await post
            assert receiver.requests == []
        else:  # the same request without the peer check does reach the receiver
            async with await post as resp:
                assert resp.status == 200
            assert len(receiver.requests) == 1
