"""End-to-end harness: the real processes (simulator, sink, API, beat, workers) on free ports.

The stack is started once per module with short intervals
(``POLLINATOR_MIN_REFRESH_MINUTES``) and torn down afterwards; every test makes
its own organization, simulator account and instance, so tests don't see each
other's events.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import redis

from app.client import InstanceSpec, OAuthApp, Pollinator, Simulator, authorization
from app.embedded import drop_database, free_port, scratch_database
from app.migrate import upgrade
from app.procs import Process, http_ok, log_contains, wait_until
from tests.conftest import ROOT, SECRET_KEY, ServiceUrls

T = TypeVar("T")

pytestmark = pytest.mark.e2e
REFRESH_MINUTES = 0.02  # 1.2 s


def http_json(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None


def is_up(url: str) -> bool:
    return http_ok(url)()


# The one readiness wait, under the name these tests know (it raises TimeoutError).
wait_for = wait_until


def run_client(work: Callable[[aiohttp.ClientSession], Awaitable[T]]) -> T:
    """Run one piece of :mod:`app.client` work from these synchronous tests."""

    async def main() -> T:
        async with aiohttp.ClientSession() as http:
            return await work(http)

    return asyncio.run(main())


@dataclass
class Stack:
    """The running processes and how to talk to them."""

    workdir: Path
    env: dict[str, str]
    sim_url: str
    sink_url: str
    api_url: str
    procs: dict[str, Process] = field(default_factory=dict)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def start(self, name: str, *args: str) -> Process:
        argv = [sys.executable, "-m", "app.cli", *args]
        proc = Process.start(name, argv, self.workdir / f"{name}.log", env=self.env, cwd=ROOT)
        self.procs[name] = proc
        return proc

    def stop(self, name: str, sig: int = signal.SIGTERM, wait: float = 15.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            proc.stop(grace=wait, sig=sig)

    def stop_all(self) -> None:
        """Stop every process, then forget this stack's Redis state and database."""
        for name in list(self.procs):
            self.stop(name)
        for cleanup in reversed(self.cleanups):
            cleanup()
        self.cleanups.clear()

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def cli_json(self, *args: str) -> Any:
        out = subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            check=True,
            timeout=60,
        )
        return json.loads(out.stdout)

    # --- simulator, sink and API helpers --------------------------------------------------

    def sim(self, work: Callable[[Simulator], Awaitable[T]]) -> T:
        """Run ``work`` against this stack's simulator (its admin API)."""
        return run_client(lambda http: work(Simulator(http, self.sim_url)))

    def sink_requests(self) -> list[dict[str, Any]]:
        status, data = http_json("GET", self.sink_url + "/_sink/requests")
        assert status == 200
        return list(data if isinstance(data, list) else data.get("requests", []))

    def new_tenant(self, name: str = "e2e") -> Tenant:
        org = self.cli_json("org", "create", name)
        return Tenant(
            self, {"Authorization": authorization(org["userSecret"], org["organizationSecret"])}
        )


@dataclass
class Tenant:
    """One organization with (after :meth:`create_instance`) one instance on its own account."""

    stack: Stack
    headers: dict[str, str]
    account: str = ""
    instance_id: int = 0
    started_at: str = ""

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return http_json(method, f"{self.stack.api_url}/elements/api-v2{path}", body, self.headers)

    def create_instance(self, poller: dict[str, Any] | None = None, **config: Any) -> int:
        """An instance on a fresh simulator account, through consent and ``POST /instances``."""
        self.account = f"e2e-{uuid.uuid4().hex[:10]}"
        spec = InstanceSpec(
            app=OAuthApp("e2e-client", "e2e-secret", "https://app.example/cb"),
            callback_url=f"{self.stack.sink_url}/events/{self.account}",
            name=f"e2e {self.account}",
            refresh_minutes=REFRESH_MINUTES,
            signature_key="e2e-signature-key",
            poller=poller,
            extra=config,
        )
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - 1))
        created = run_client(
            lambda http: Pollinator(
                http, self.stack.api_url, self.headers["Authorization"]
            ).create_authorized(Simulator(http, self.stack.sim_url), spec, self.account)
        )
        self.instance_id = int(created["id"])
        return self.instance_id

    def write(self, resource: str, **fields: Any) -> dict[str, Any]:
        return self.stack.sim(lambda sim: sim.create_record(self.account, resource, fields))

    def update(self, resource: str, rid: int, **fields: Any) -> dict[str, Any]:
        changed = fields or {"notes": uuid.uuid4().hex}
        return self.stack.sim(lambda sim: sim.update_record(self.account, resource, rid, changed))

    def delete(self, resource: str, rid: int) -> None:
        self.stack.sim(lambda sim: sim.delete_record(self.account, resource, rid))

    def fault(self, kind: str, seconds: float, probability: float = 1.0, **extra: Any) -> None:
        self.stack.sim(lambda sim: sim.add_fault(kind, seconds, probability, self.account, **extra))

    def changes(self) -> list[dict[str, Any]]:
        return self.stack.sim(lambda sim: sim.changes(self.account))

    def callbacks(self) -> list[dict[str, Any]]:
        """Every callback body this instance's URL received (in arrival order)."""
        path = f"/events/{self.account}"
        return [r for r in self.stack.sink_requests() if r["path"] == path]

    def received(self) -> list[tuple[str, str, str]]:
        """(objectType, objectId, eventType) of every event received, duplicates included."""
        seen: list[tuple[str, str, str]] = []
        for request in self.callbacks():
            if request.get("status", 200) >= 300:
                continue
            message = json.loads(request["body"])["message"]
            seen += [(e["objectType"], e["objectId"], e["eventType"]) for e in message["events"]]
        return seen

    def wait_received(self, expected: set[tuple[str, str, str]], timeout: float = 40.0) -> None:
        def done() -> bool:
            return expected <= set(self.received())

        try:
            wait_for(done, timeout, what="callbacks")
        except TimeoutError:
            missing = expected - set(self.received())
            raise AssertionError(
                f"missing {sorted(missing)}; got {sorted(self.received())}"
            ) from None

    def assert_exactly(self, expected: set[tuple[str, str, str]], settle: float = 4.0) -> None:
        """All expected events arrived, nothing else did, and nothing arrived twice."""
        self.wait_received(expected)
        time.sleep(settle)  # a few more polls: nothing new or repeated may show up
        received = self.received()
        assert set(received) == expected
        assert len(received) == len(set(received)), "an event was delivered twice"


def expected_from_changes(
    changes: list[dict[str, Any]], polled_creates: set[tuple[str, str]] | None = None
) -> set[tuple[str, str, str]]:
    """Creates → CREATED; updates of records created before → UPDATED (deletes: nothing)."""
    result: set[tuple[str, str, str]] = set()
    for change in changes:
        key = (change["resource"], str(change["id"]))
        if change["op"] == "create":
            result.add((*key, "CREATED"))
        elif change["op"] == "update" and (polled_creates is None or key in polled_creates):
            result.add((*key, "UPDATED"))
    return result


def _flush(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()


def start_stack(
    service_urls: ServiceUrls,
    workdir: Path,
    *,
    sim_args: tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
) -> Stack:
    """A whole stack on its own database, with Redis (broker, locks, watermarks) flushed.

    Stacks of different modules run one after another on the same Redis; instance ids
    restart in each database, so no key or queued task of one stack may reach the next.
    """
    database_url, database = scratch_database(service_urls.database_url, "pollinator_e2e")
    upgrade(database_url)
    _flush(service_urls.redis_url)
    sim_port, sink_port, api_port = free_port(), free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    env = {
        **os.environ,
        "POLLINATOR_DATABASE_URL": database_url,
        "POLLINATOR_REDIS_URL": service_urls.redis_url,
        "POLLINATOR_SECRET_KEY": SECRET_KEY,
        "POLLINATOR_MIN_REFRESH_MINUTES": str(REFRESH_MINUTES),
        "POLLINATOR_ALLOW_PRIVATE_CALLBACKS": "true",
        "POLLINATOR_INFUSIONSOFT_API_URL": f"{sim_url}/crm/rest/v1",
        "POLLINATOR_INFUSIONSOFT_TOKEN_URL": f"{sim_url}/token",
        "POLLINATOR_INFUSIONSOFT_AUTHORIZE_URL": f"{sim_url}/app/oauth/authorize",
        "POLLINATOR_API_PORT": str(api_port),
        "POLLINATOR_DELIVERY_RETRY_SCHEDULE": "1,1,2,2,3",
        "POLLINATOR_PROVIDER_TIMEOUT_SECONDS": "3",
        "POLLINATOR_POLL_CONCURRENCY": "16",
        "POLLINATOR_DELIVERY_CONCURRENCY": "16",
        **(extra_env or {}),
    }
    stack = Stack(
        workdir, env, sim_url, f"http://127.0.0.1:{sink_port}", f"http://127.0.0.1:{api_port}"
    )
    stack.cleanups += [
        lambda: drop_database(service_urls.database_url, database),
        lambda: _flush(service_urls.redis_url),
    ]
    stack.start("simulator", "simulate", "--port", str(sim_port), "--seed", "11", *sim_args)
    stack.start("sink", "sink", "--port", str(sink_port), "--out", str(workdir / "sink.jsonl"))
    stack.start("api", "api")
    stack.start("beat", "beat")
    stack.start("worker-poll", "worker", "--queues", "poll")
    stack.start("worker-delivery", "worker", "--queues", "delivery")
    try:
        for name, url in (
            ("simulator", f"{sim_url}/_sim/stats"),
            ("sink", f"{stack.sink_url}/_sink/requests"),
            ("api", f"{stack.api_url}/readyz"),
        ):
            wait_until(http_ok(url), 60, watch=stack.procs[name])
        for name in ("worker-poll", "worker-delivery"):
            wait_until(log_contains(stack.procs[name], "ready"), 60, watch=stack.procs[name])
    except BaseException:
        stack.stop_all()
        raise
    return stack


@pytest.fixture(scope="module")
def stack(service_urls: ServiceUrls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stack")
    running = start_stack(service_urls, workdir)
    try:
        yield running
    finally:
        running.stop_all()
