"""A small typed client for Pollinator's public API and the simulator's admin API.

The demo, the load test, the benches and the tests all create instances the way a
platform team does — OAuth consent at the provider's authorize page, then
``POST /instances`` with the code — so that path is written once: :class:`InstanceSpec`
holds what a caller chooses and renders the SPEC §3 create body; :class:`Simulator`
walks the simulator's consent page and drives its ``/_sim`` admin routes;
:class:`Pollinator` calls the ``/elements/api-v2`` routes. Both take an
``aiohttp.ClientSession`` the caller owns (a test server's session works as well).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp

API_BASE = "/elements/api-v2"
ELEMENT_KEY = "infusionsoftrest"


class ClientError(RuntimeError):
    """A call answered with an unexpected status; ``status`` and ``body`` say what it was."""

    def __init__(self, method: str, url: str, status: int, body: Any) -> None:
        super().__init__(f"{method} {url}: {status} {body}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class OAuthApp:
    """An OAuth application registered with the provider."""

    client_id: str
    client_secret: str
    redirect_uri: str


@dataclass(frozen=True)
class InstanceSpec:
    """What the creator of one instance chooses; :meth:`body` is the SPEC §3 create body."""

    app: OAuthApp
    callback_url: str
    name: str = "API Instance with Polling"
    tags: Sequence[str] = ()
    refresh_minutes: float = 15
    signature_key: str | None = None
    # ``None``: the engine's default resources.
    poller: Mapping[str, Any] | None = None
    events_enabled: bool = True
    # Further (or overriding) configuration keys, applied last.
    extra: Mapping[str, Any] = field(default_factory=dict)

    def body(self, code: str) -> dict[str, Any]:
        """The create body for the authorization grant ``code``, keys in SPEC §3 order.

        A fresh copy each time: a caller may change the body without changing the spec.
        """
        configuration: dict[str, Any] = {
            "oauth.api.key": self.app.client_id,
            "oauth.api.secret": self.app.client_secret,
            "oauth.callback.url": self.app.redirect_uri,
            "event.notification.enabled": self.events_enabled,
            "event.vendor.type": "polling",
            "event.notification.callback.url": self.callback_url,
        }
        if self.signature_key is not None:
            configuration["event.notification.signature.key"] = self.signature_key
        configuration["event.poller.refresh_interval"] = self.refresh_minutes
        if self.poller is not None:
            configuration["event.poller.configuration"] = copy.deepcopy(dict(self.poller))
        configuration.update(copy.deepcopy(dict(self.extra)))
        return {
            "element": {"key": ELEMENT_KEY},
            "providerData": {"code": code},
            "name": self.name,
            "tags": list(self.tags),
            "configuration": configuration,
        }


def authorization(user_secret: str, organization_secret: str) -> str:
    """The ``Authorization`` header value of an organization's user."""
    return f"User {user_secret}, Organization {organization_secret}"


async def _decode(resp: aiohttp.ClientResponse) -> Any:
    text = await resp.text()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


class Simulator:
    """The provider simulator: its consent page, token endpoint and ``/_sim`` admin API."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url.rstrip("/")

    async def call(
        self, method: str, path: str, body: Any = None, params: Mapping[str, str] | None = None
    ) -> Any:
        """One admin call; any status of 300 or more raises :class:`ClientError`."""
        url = self.url + path
        async with self.http.request(method, url, json=body, params=params) as resp:
            data = await _decode(resp)
            if resp.status >= 300:
                raise ClientError(method, url, resp.status, data)
            return data

    async def authorize(self, app: OAuthApp, account: str, state: str | None = None) -> str:
        """Walk the consent page for ``account`` and return the code from its redirect."""
        params = {
            "client_id": app.client_id,
            "redirect_uri": app.redirect_uri,
            "response_type": "code",
            "scope": "full",
            "state": state or account,
            "account": account,
        }
        url = f"{self.url}/app/oauth/authorize"
        async with self.http.get(url, params=params, allow_redirects=False) as resp:
            location = resp.headers.get("Location", "")
            status = resp.status
        code = parse_qs(urlsplit(location).query).get("code", [""])[0]
        if status != 302 or not code:
            raise ClientError("GET", url, status, f"no authorization code ({location!r})")
        return code

    async def token(self, app: OAuthApp, code: str) -> dict[str, Any]:
        """Exchange ``code`` as Pollinator does; the token response."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": app.redirect_uri,
            "client_id": app.client_id,
            "client_secret": app.client_secret,
        }
        url = f"{self.url}/token"
        async with self.http.post(url, data=form) as resp:
            data = await _decode(resp)
            if resp.status != 200 or not isinstance(data, dict):
                raise ClientError("POST", url, resp.status, data)
            return data

    async def create_record(
        self, account: str, resource: str, fields: Mapping[str, Any]
    ) -> dict[str, Any]:
        record: dict[str, Any] = await self.call(
            "POST", f"/_sim/accounts/{account}/{resource}", dict(fields)
        )
        return record

    async def update_record(
        self, account: str, resource: str, rid: int, fields: Mapping[str, Any]
    ) -> dict[str, Any]:
        record: dict[str, Any] = await self.call(
            "PATCH", f"/_sim/accounts/{account}/{resource}/{rid}", dict(fields)
        )
        return record

    async def delete_record(self, account: str, resource: str, rid: int) -> None:
        await self.call("DELETE", f"/_sim/accounts/{account}/{resource}/{rid}")

    async def changes(self, account: str, since: str | None = None) -> list[dict[str, Any]]:
        """The account's ground-truth change log (oldest first)."""
        params = {"since": since} if since else None
        data = await self.call("GET", f"/_sim/accounts/{account}/changes", params=params)
        return list(data if isinstance(data, list) else data.get("changes", []))

    async def add_fault(
        self,
        kind: str,
        seconds: float,
        probability: float = 1.0,
        account: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Inject ``kind`` for ``seconds`` (``extra``: e.g. ``delaySeconds``)."""
        body: dict[str, Any] = {"kind": kind, "seconds": seconds, "probability": probability}
        if account is not None:
            body["account"] = account
        fault: dict[str, Any] = await self.call("POST", "/_sim/faults", {**body, **extra})
        return fault

    async def clear_faults(self) -> None:
        await self.call("DELETE", "/_sim/faults")

    async def mutator(
        self,
        changes_per_second: float,
        resources: Sequence[str] | None = None,
        create_ratio: float | None = None,
        accounts: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Start (or, at 0, stop) random changes across the accounts."""
        body: dict[str, Any] = {"changesPerSecond": changes_per_second}
        if resources is not None:
            body["resources"] = list(resources)
        if create_ratio is not None:
            body["createRatio"] = create_ratio
        if accounts is not None:
            body["accounts"] = list(accounts)
        state: dict[str, Any] = await self.call("POST", "/_sim/mutator", body)
        return state

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = await self.call("GET", "/_sim/stats")
        return stats


class Pollinator:
    """The public API (``/elements/api-v2``) as one organization's user."""

    def __init__(self, http: aiohttp.ClientSession, url: str, auth: str) -> None:
        self.http = http
        self.url = url.rstrip("/")
        self.auth = auth

    async def request(
        self, method: str, path: str, body: Any = None, params: Mapping[str, Any] | None = None
    ) -> tuple[int, Any]:
        """``(status, decoded body)`` of one call under the base path, whatever the status."""
        url = f"{self.url}{API_BASE}{path}"
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        headers = {"Authorization": self.auth}
        async with self.http.request(method, url, json=body, params=query, headers=headers) as resp:
            return resp.status, await _decode(resp)

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        expect: int = 200,
    ) -> Any:
        """The decoded body of a call that must answer ``expect``, else :class:`ClientError`."""
        status, data = await self.request(method, path, body, params)
        if status != expect:
            raise ClientError(method, f"{self.url}{API_BASE}{path}", status, data)
        return data

    async def create_instance(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /instances`` with a ready body; the created instance (with its token)."""
        created: dict[str, Any] = await self.call("POST", "/instances", dict(body))
        return created

    async def create_authorized(
        self, sim: Simulator, spec: InstanceSpec, account: str
    ) -> dict[str, Any]:
        """The whole creation: consent for ``account`` at the simulator, then the create."""
        code = await sim.authorize(spec.app, account)
        return await self.create_instance(spec.body(code))

    async def list_instances(self, page: int = 1, page_size: int = 100) -> list[dict[str, Any]]:
        data = await self.call("GET", "/instances", params={"page": page, "pageSize": page_size})
        return list(data)

    async def get_instance(self, instance_id: int) -> dict[str, Any]:
        instance: dict[str, Any] = await self.call("GET", f"/instances/{instance_id}")
        return instance

    async def patch_instance(self, instance_id: int, changes: Mapping[str, Any]) -> dict[str, Any]:
        instance: dict[str, Any] = await self.call(
            "PATCH", f"/instances/{instance_id}", dict(changes)
        )
        return instance

    async def delete_instance(self, instance_id: int) -> None:
        await self.call("DELETE", f"/instances/{instance_id}")

    async def polling(self, instance_id: int) -> list[dict[str, Any]]:
        """Per-resource polling state."""
        return list(await self.call("GET", f"/instances/{instance_id}/polling"))

    async def poll_now(self, instance_id: int) -> None:
        await self.call("POST", f"/instances/{instance_id}/polling/run", expect=202)

    async def events(self, instance_id: int, **filters: Any) -> list[dict[str, Any]]:
        """The event log, newest first (``objectType=``, ``eventType=``, ``since=``, ``page=``)."""
        return list(await self.call("GET", f"/instances/{instance_id}/events", params=filters))

    async def deliveries(
        self, instance_id: int, status: str | None = None, **params: Any
    ) -> list[dict[str, Any]]:
        """Deliveries with every attempt (``status``: pending, delivered or failed)."""
        query = {"status": status, **params}
        return list(await self.call("GET", f"/instances/{instance_id}/deliveries", params=query))
