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

import aiohttp

from app.client import ClientError, InstanceSpec, OAuthApp, Pollinator, Simulator, authorization
from app.orgs import create
from app.procs import NotReady, http_ok, wait_until

DEMO_ACCOUNT = "demo"
DEMO_CLIENT_ID = "pollinator-demo"
DEMO_CLIENT_SECRET = "pollinator-demo-secret"
DEMO_CHANGES_PER_SECOND = 0.5
FIRST_POLL_AFTER_S = 6.0
READY_TIMEOUT_S = 60.0


def _auth(state: dict[str, Any]) -> str:
    return authorization(state["userSecret"], state["organizationSecret"])


async def _organization(
    http: aiohttp.ClientSession, api_url: str, database_url: str, state_file: Path
) -> dict[str, Any]:
    """The demo organization: the saved one while its credentials still work, else a new one."""
    if state_file.exists():
        state: dict[str, Any] = json.loads(state_file.read_text())
        status, _ = await Pollinator(http, api_url, _auth(state)).request("GET", "/instances")
        if status == 200:
            return state
    org = await create(database_url, "demo")
    return {
        "organizationId": org.organization_id,
        "organizationSecret": org.organization_secret,
        "userSecret": org.user_secret,
    }


async def _setup(
    api_url: str, database_url: str, data_dir: Path, sim_url: str, sink: str
) -> dict[str, Any]:
    """Organization (kept across runs) and a fresh demo instance.

    The simulator keeps its accounts and tokens in memory, so an instance authorized
    against the previous run's simulator could no longer refresh its token: each run
    deletes the previous demo instance and authorizes a new one.
    """
    state_file = data_dir / "demo.json"
    async with aiohttp.ClientSession() as http:
        state = await _organization(http, api_url, database_url, state_file)
        api = Pollinator(http, api_url, _auth(state))
        sim = Simulator(http, sim_url)
        if "instanceId" in state:
            await api.request("DELETE", f"/instances/{state['instanceId']}")
        spec = InstanceSpec(
            app=OAuthApp(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, f"{sink}/oauth/callback"),
            callback_url=f"{sink}/events",
            name="Demo instance",
            tags=["demo"],
            refresh_minutes=1,
            signature_key="demo-signature-key",
        )
        created = await api.create_authorized(sim, spec, DEMO_ACCOUNT)
        state.update(instanceId=created["id"], instanceToken=created["token"])
        state_file.write_text(json.dumps(state, indent=2))
        state_file.chmod(0o600)
        await sim.mutator(
            DEMO_CHANGES_PER_SECOND, resources=["contacts", "orders"], create_ratio=0.5
        )
        # The first scheduled poll may be up to an interval away: poll once a few seconds
        # in, so the newcomer sees callbacks arrive right away.
        await asyncio.sleep(FIRST_POLL_AFTER_S)
        await api.poll_now(state["instanceId"])
    return state


def setup_demo(
    api_url: str, database_url: str, data_dir: Path, sim_port: int, sink_port: int
) -> str:
    """Create (or reuse) the demo and return what to tell the newcomer."""
    sim, sink = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{sink_port}"
    try:
        wait_until(http_ok(f"{sim}/_sim/accounts"), READY_TIMEOUT_S)
        wait_until(http_ok(f"{sink}/_sink/requests"), READY_TIMEOUT_S)
        state = asyncio.run(_setup(api_url, database_url, data_dir, sim, sink))
    except (NotReady, ClientError, aiohttp.ClientError, OSError) as exc:
        return f"Demo setup failed: {exc} (see {data_dir / 'logs'})"
    auth = _auth(state)
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
