"""Schema built through the migrations agrees with the models; probes and OpenAPI answer."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from app.migrate import check, upgrade
from tests.conftest import ServiceUrls


def test_alembic_check_passes(service_urls: ServiceUrls) -> None:
    upgrade(service_urls.database_url)  # idempotent at head
    check(service_urls.database_url)


async def test_health_ready_openapi_metrics(api: TestClient[Any, Any]) -> None:
    assert (await api.get("/healthz")).status == 200
    ready = await api.get("/readyz")
    assert ready.status == 200, await ready.text()
    spec = await (await api.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    # Every route the API serves is described (the UI's static pages aside).
    served = {
        r.resource.canonical
        for r in api.server.app.router.routes()
        if r.resource is not None and not r.resource.canonical.startswith("/ui")
    }
    assert served == set(spec["paths"])
    metrics = await api.get("/metrics")
    assert metrics.status == 200
    assert "text/plain" in metrics.headers["Content-Type"]


async def test_unknown_route_is_json_404(api: TestClient[Any, Any]) -> None:
    resp = await api.get("/elements/api-v2/nope")
    assert resp.status == 404
    assert set(await resp.json()) == {"requestId", "message"}


async def test_oauth_url(api: TestClient[Any, Any], org: dict[str, str]) -> None:
    resp = await api.get(
        "/elements/api-v2/elements/infusionsoftrest/oauth/url"
        "?apiKey=cid&apiSecret=s&callbackUrl=https://app.example.com/cb&state=xyz",
        headers=org,
    )
    assert resp.status == 200
    data = await resp.json()
    assert data["element"] == "infusionsoftrest"
    url = data["oauthUrl"]
    assert url.startswith("https://accounts.infusionsoft.com/app/oauth/authorize?")
    for part in (
        "client_id=cid",
        "response_type=code",
        "scope=full",
        "state=xyz",
        "redirect_uri=https%3A%2F%2Fapp.example.com%2Fcb",
    ):
        assert part in url
    missing = await api.get(
        "/elements/api-v2/elements/infusionsoftrest/oauth/url?callbackUrl=x", headers=org
    )
    assert missing.status == 400
    assert "apiKey" in (await missing.json())["message"]
