"""Fixtures: the simulator and the sink served in-process over real HTTP (aiohttp TestServer)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from app.simulator import SimulatorConfig, create_app

REDIRECT = "https://app.example.com/cb"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[web.Application], Awaitable[TestClient[Any, Any]]]]:
    """Serve any app on a free port; clients are closed at teardown."""
    clients: list[TestClient[Any, Any]] = []

    async def start(app: web.Application) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


@pytest.fixture
async def make_sim(
    serve: Callable[[web.Application], Awaitable[TestClient[Any, Any]]],
) -> Callable[..., Awaitable[TestClient[Any, Any]]]:
    """``await make_sim(**SimulatorConfig fields)`` -> a client bound to a fresh simulator."""

    async def factory(**kwargs: Any) -> TestClient[Any, Any]:
        kwargs.setdefault("seed", 7)
        return await serve(create_app(SimulatorConfig(**kwargs)))

    return factory


async def authorize(
    client: TestClient[Any, Any],
    account: str | None = "acme",
    client_id: str = "cid",
    state: str = "st",
) -> str:
    """Run the consent step; returns the code."""
    params = {
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "response_type": "code",
        "scope": "full",
        "state": state,
    }
    if account is not None:
        params["account"] = account
    resp = await client.get("/app/oauth/authorize", params=params, allow_redirects=False)
    assert resp.status == 302, await resp.text()
    location = urlsplit(resp.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    query = parse_qs(location.query)
    assert query["state"] == [state]
    return query["code"][0]


async def token(client: TestClient[Any, Any], **form: str) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/token", data=form)
    return resp.status, await resp.json()


async def login(
    client: TestClient[Any, Any], account: str | None = "acme", client_id: str = "cid"
) -> dict[str, Any]:
    """Full code flow; returns the token response."""
    code = await authorize(client, account, client_id)
    status, body = await token(
        client,
        grant_type="authorization_code",
        code=code,
        redirect_uri=REDIRECT,
        client_id=client_id,
        client_secret="secret",
    )
    assert status == 200, body
    return body


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}
