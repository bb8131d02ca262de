"""The demo that ``pollinator up --demo`` sets up: an organization, an OAuth-authorized
instance on the simulator, and a trickle of changes whose events land at the sink.

It goes through the public API exactly as a platform team would (OAuth consent
at the provider's authorize page, then ``POST /instances``), so the demo also
shows the integration path.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp

from app.orgs import create

DEMO_ACCOUNT = "demo"
DEMO_CLIENT_ID = "pollinator-demo"
DEMO_CLIENT_SECRET = "pollinator-demo-secret"
DEMO_CHANGES_PER_SECOND = 0.5
FIRST_POLL_AFTER_S = 6.0


async def _wait_up(http: aiohttp.ClientSession, url: str, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            async with http.get(url, allow_redirects=False) as resp:
                if resp.status < 500:
                    return
        except aiohttp.ClientError:
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"{url} did not come up")
        await asyncio.sleep(0.3)


async def authorization_code(
    http: aiohttp.ClientSession, authorize_url: str, redirect_uri: str, account: str
) -> str:
    """Walk the simulator's consent page and read the code from its redirect."""
    params = {
        "client_id": DEMO_CLIENT_ID,
        "redirect_uri": redirect_uri,
        "response_type": "code",
        "scope": "full",
        "state": "demo",
        "account": account,
    }
    async with http.get(authorize_url, params=params, allow_redirects=False) as resp:
        location = resp.headers.get("Location", "")
    code = parse_qs(urlsplit(location).query).get("code", [""])[0]
    if not code:
        raise RuntimeError(f"simulator gave no authorization code ({location!r})")
    return code


def _auth(state: dict[str, Any]) -> dict[str, str]:
    return {
        "Authorization": f"User {state['userSecret']}, Organization {state['organizationSecret']}"
    }


async def _organization(
    http: aiohttp.ClientSession, api_url: str, database_url: str, state_file: Path
) -> dict[str, Any]:
    """The demo organization: the saved one while its credentials still work, else a new one."""
    if state_file.exists():
        state: dict[str, Any] = json.loads(state_file.read_text())
        async with http.get(f"{api_url}/elements/api-v2/instances", headers=_auth(state)) as r:
            if r.status == 200:
                return state
    org = await create(database_url, "demo")
    return {
        "organizationId": org.organization_id,
        "organizationSecret": org.organization_secret,
        "userSecret": org.user_secret,
    }


async def _setup(
    api_url: str, database_url: str, data_dir: Path, sim: str, sink: str
) -> dict[str, Any]:
    """Organization (kept across runs) and a fresh demo instance.

    The simulator keeps its accounts and tokens in memory, so an instance authorized
    against the previous run's simulator could no longer refresh its token: each run
    deletes the previous demo instance and authorizes a new one.
    """
    state_file = data_dir / "demo.json"
    async with aiohttp.ClientSession() as http:
        await _wait_up(http, f"{sim}/_sim/accounts")
        await _wait_up(http, f"{sink}/_sink/requests")
        state = await _organization(http, api_url, database_url, state_file)
        if "instanceId" in state:
            async with http.delete(
                f"{api_url}/elements/api-v2/instances/{state['instanceId']}", headers=_auth(state)
            ):
                pass
        code = await authorization_code(
            http, f"{sim}/app/oauth/authorize", f"{sink}/oauth/callback", DEMO_ACCOUNT
        )
        body = {
            "element": {"key": "infusionsoftrest"},
            "providerData": {"code": code},
            "name": "Demo instance",
            "tags": ["demo"],
            "configuration": {
                "oauth.api.key": DEMO_CLIENT_ID,
                "oauth.api.secret": DEMO_CLIENT_SECRET,
                "oauth.callback.url": f"{sink}/oauth/callback",
                "event.notification.enabled": True,
                "event.vendor.type": "polling",
                "event.notification.callback.url": f"{sink}/events",
                "event.notification.signature.key": "demo-signature-key",
                "event.poller.refresh_interval": 1,
            },
        }
        async with http.post(
            f"{api_url}/elements/api-v2/instances", json=body, headers=_auth(state)
        ) as resp:
            created = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"creating the demo instance failed: {created}")
        state.update(instanceId=created["id"], instanceToken=created["token"])
        state_file.write_text(json.dumps(state, indent=2))
        state_file.chmod(0o600)
        async with http.post(
            f"{sim}/_sim/mutator",
            json={
                "changesPerSecond": DEMO_CHANGES_PER_SECOND,
                "resources": ["contacts", "orders"],
                "createRatio": 0.5,
            },
        ) as resp:
            resp.raise_for_status()
        # The first scheduled poll may be up to an interval away: poll once a few seconds
        # in, so the newcomer sees callbacks arrive right away.
        await asyncio.sleep(FIRST_POLL_AFTER_S)
        async with http.post(
            f"{api_url}/elements/api-v2/instances/{state['instanceId']}/polling/run",
            headers=_auth(state),
        ) as resp:
            resp.raise_for_status()
    return state


def setup_demo(
    api_url: str, database_url: str, data_dir: Path, sim_port: int, sink_port: int
) -> str:
    """Create (or reuse) the demo and return what to tell the newcomer."""
    sim, sink = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{sink_port}"
    try:
        state = asyncio.run(_setup(api_url, database_url, data_dir, sim, sink))
    except (RuntimeError, aiohttp.ClientError, OSError) as exc:
        return f"Demo setup failed: {exc} (see {data_dir / 'logs'})"
    auth = f"User {state['userSecret']}, Organization {state['organizationSecret']}"
    base = f"{api_url}/elements/api-v2/instances/{state['instanceId']}"
    return (
        "Demo: the simulator makes ~1 change every 2 s; callbacks reach the sink within seconds.\n"
        f"  simulator   {sim} (Keap REST at {sim}/crm/rest/v1)\n"
        f"  sink        {sink} — every callback is appended to {data_dir / 'sink.jsonl'}\n"
        f"  credentials Authorization: {auth}\n"
        f"  try         curl -s -H '{'Authorization: ' + auth}' {base}/events\n"
        f"              curl -s -H '{'Authorization: ' + auth}' {base}/polling\n"
        f"              tail -f {data_dir / 'sink.jsonl'}"
    )
