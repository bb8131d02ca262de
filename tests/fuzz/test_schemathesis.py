"""Schemathesis against ``/openapi.json`` of a running API: no 5xx, no broken promise.

The API runs on a real port (its own event loop in a thread, real PostgreSQL and
Redis), authenticated as an organization made for the run, with a local token
endpoint that accepts every code so creates can succeed. The schemathesis CLI runs
every phase (examples, coverage, fuzzing, stateful) over every operation with every
check but ``positive_data_acceptance`` (a schema-valid body may still be refused on
meaning - a callback on a private address, a date format with an unknown letter - and
a 400 naming the field is right there). ``tests/fuzz/hooks.py`` aims path ids at real
instances and gives every DELETE a throwaway instance of its own.

``make test`` runs ``POLLINATOR_FUZZ_EXAMPLES`` (default 10) fuzzing examples per
operation; ``make fuzz`` raises it for depth.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from app.api.server import create_app
from app.db import create_engine, session_factory, transaction
from app.services.orgs import create_organization
from app.settings import Settings
from tests.conftest import ROOT, SECRET_KEY, ServiceUrls
from tests.fuzz.hooks import throwaway_instance

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("POLLINATOR_FUZZ_EXAMPLES", "10"))
SEED = os.environ.get("POLLINATOR_FUZZ_SEED", "1")


@dataclass(frozen=True)
class RunningApi:
    url: str
    authorization: str
    instance_ids: list[int]


async def _accept_every_code(request: web.Request) -> web.Response:
    form = await request.post()
    code = str(form.get("code", ""))[:20]
    return web.json_response(
        {"access_token": f"AT-{code}", "refresh_token": "RT", "expires_in": 86400}
    )


class _ServerThread:
    """The API and the token endpoint on real ports, served by an event loop of their own."""

    def __init__(self, service_urls: ServiceUrls) -> None:
        self.service_urls = service_urls
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.runners: list[web.AppRunner] = []
        self.api_url = ""
        self.authorization = ""
        self.thread = threading.Thread(target=self._run, daemon=True)

    async def _site(self, app: web.Application) -> int:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.runners.append(runner)
        return int(runner.addresses[0][1])

    async def _start(self) -> None:
        token_app = web.Application()
        token_app.router.add_post("/token", _accept_every_code)
        token_port = await self._site(token_app)
        settings = Settings(
            database_url=self.service_urls.database_url,
            redis_url=self.service_urls.redis_url,
            secret_key=SECRET_KEY,
            infusionsoft_token_url=f"http://127.0.0.1:{token_port}/token",
            # Fuzzed callback hosts must never be resolved: this run stays on loopback.
            allow_private_callbacks=True,
            provider_timeout_seconds=5.0,
            api_requests_per_second_per_org=0,
        )
        self.api_url = f"http://127.0.0.1:{await self._site(create_app(settings))}"
        engine = create_engine(self.service_urls.database_url, pool_size=1)
        try:
            async with transaction(session_factory(engine)) as session:
                org = await create_organization(session, f"fuzz-{uuid.uuid4().hex[:8]}")
        finally:
            await engine.dispose()
        self.authorization = f"User {org.user_secret}, Organization {org.organization_secret}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.ready.set()
        self.loop.run_forever()

    def start(self) -> None:
        self.thread.start()
        assert self.ready.wait(60), "the API did not start"

    def stop(self) -> None:
        async def cleanup() -> None:
            for runner in reversed(self.runners):
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(60)
        self.loop.close()


@pytest.fixture(scope="module")
def running_api(service_urls: ServiceUrls) -> Iterator[RunningApi]:
    server = _ServerThread(service_urls)
    server.start()
    try:
        ids = [throwaway_instance(server.api_url, server.authorization) for _ in range(3)]
        yield RunningApi(server.api_url, server.authorization, ids)
    finally:
        server.stop()


@pytest.mark.timeout(3600)  # the run is bounded by its example count, not by the clock
def test_api_keeps_every_openapi_promise(
    running_api: RunningApi, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.fuzz.hooks",
        "PYTHONPATH": str(ROOT),
        "POLLINATOR_FUZZ_IDS": ",".join(map(str, running_api.instance_ids)),
        "POLLINATOR_FUZZ_API": running_api.url,
        "POLLINATOR_FUZZ_AUTHORIZATION": running_api.authorization,
    }
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{running_api.url}/openapi.json",
        "--header", f"Authorization: {running_api.authorization}",
        "--checks", "all",
        "--exclude-checks", "positive_data_acceptance",
        "--max-examples", str(EXAMPLES),
        "--seed", SEED,
        "--generation-database", "none",
        "--workers", "1",
        "--request-timeout", "30",
        "--no-color",
        # Erasing the organization would end the run (every later call a 401); the erasure
        # route has its own tests (tests/integration/test_erasure.py).
        "--exclude-path", "/elements/api-v2/organizations/me",
    ]  # fmt: skip
    done = subprocess.run(
        # In a scratch directory: the CLI keeps its replay store (.schemathesis/) there.
        command,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=3000,
        check=False,
    )
    output = done.stdout + done.stderr
    summary = output[output.rfind("SUMMARY") :] if "SUMMARY" in output else output[-3000:]
    counted = re.search(r"(\d+) generated.*", summary)
    with capsys.disabled():  # the case count belongs in every test log, CI's included
        print(f"\nschemathesis, {EXAMPLES} fuzzing examples per operation: "
              + (counted.group(0) if counted else "no count"))  # fmt: skip
    # The whole report (failures with curl reproductions) for whoever investigates.
    (ROOT / ".data").mkdir(exist_ok=True)
    (ROOT / ".data" / "fuzz-last.txt").write_text(output)
    assert done.returncode == 0, output[-20000:]
    assert counted is not None, summary
    assert int(counted.group(1)) > 0, summary
