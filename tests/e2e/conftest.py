"""End-to-end harness: the real processes (simulator, sink, API, beat, workers) on free ports.

The stack is started once per module with short intervals
(``POLLINATOR_MIN_REFRESH_MINUTES``) and torn down afterwards; every test makes
its own organization, simulator account and instance, so tests don't see each
other's events.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import redis

from app.embedded import drop_database, free_port, scratch_database
from app.migrate import upgrade
from tests.conftest import ROOT, SECRET_KEY, ServiceUrls

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
    try:
        return http_json("GET", url, timeout=2)[0] == 200
    except OSError:
        return False


def wait_for(predicate: Any, timeout: float, interval: float = 0.25, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


@dataclass
class Stack:
    """The running processes and how to talk to them."""

    workdir: Path
    env: dict[str, str]
    sim_url: str
    sink_url: str
    api_url: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def stop(self, name: str, sig: int = signal.SIGTERM, wait: float = 15.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

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

    def sim(self, method: str, path: str, body: Any = None) -> Any:
        status, data = http_json(method, self.sim_url + path, body)
        assert status < 300, (status, data)
        return data

    def sink_requests(self) -> list[dict[str, Any]]:
        status, data = http_json("GET", self.sink_url + "/_sink/requests")
        assert status == 200
        return list(data if isinstance(data, list) else data.get("requests", []))

    def new_tenant(self, name: str = "e2e") -> Tenant:
        org = self.cli_json("org", "create", name)
        return Tenant(
            self,
            {
                "Authorization": (
                    f"User {org['userSecret']}, Organization {org['organizationSecret']}"
                )
            },
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
        self.account = f"e2e-{uuid.uuid4().hex[:10]}"
        query = urlencode(
            {
                "client_id": "e2e-client",
                "redirect_uri": "https://app.example/cb",
                "response_type": "code",
                "scope": "full",
                "account": self.account,
            }
        )
        req = urllib.request.Request(f"{self.stack.sim_url}/app/oauth/authorize?{query}")
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            opener.open(req, timeout=10)
            raise AssertionError("authorize did not redirect")
        except urllib.error.HTTPError as exc:
            location = exc.headers["Location"]
        code = parse_qs(urlsplit(location).query)["code"][0]
        configuration: dict[str, Any] = {
            "oauth.api.key": "e2e-client",
            "oauth.api.secret": "e2e-secret",
            "oauth.callback.url": "https://app.example/cb",
            "event.notification.enabled": True,
            "event.notification.callback.url": f"{self.stack.sink_url}/events/{self.account}",
            "event.notification.signature.key": "e2e-signature-key",
            "event.poller.refresh_interval": REFRESH_MINUTES,
            **config,
        }
        if poller is not None:
            configuration["event.poller.configuration"] = poller
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - 1))
        status, data = self.api(
            "POST",
            "/instances",
            {
                "element": {"key": "infusionsoftrest"},
                "providerData": {"code": code},
                "name": f"e2e {self.account}",
                "configuration": configuration,
            },
        )
        assert status == 200, data
        self.instance_id = int(data["id"])
        return self.instance_id

    def write(self, resource: str, **fields: Any) -> dict[str, Any]:
        record: dict[str, Any] = self.stack.sim(
            "POST", f"/_sim/accounts/{self.account}/{resource}", fields
        )
        return record

    def update(self, resource: str, rid: int, **fields: Any) -> dict[str, Any]:
        record: dict[str, Any] = self.stack.sim(
            "PATCH",
            f"/_sim/accounts/{self.account}/{resource}/{rid}",
            fields or {"notes": uuid.uuid4().hex},
        )
        return record

    def delete(self, resource: str, rid: int) -> None:
        self.stack.sim("DELETE", f"/_sim/accounts/{self.account}/{resource}/{rid}")

    def fault(self, kind: str, seconds: float, probability: float = 1.0, **extra: Any) -> None:
        self.stack.sim(
            "POST",
            "/_sim/faults",
            {
                "kind": kind,
                "seconds": seconds,
                "probability": probability,
                "account": self.account,
                **extra,
            },
        )

    def changes(self) -> list[dict[str, Any]]:
        data = self.stack.sim("GET", f"/_sim/accounts/{self.account}/changes")
        return list(data if isinstance(data, list) else data.get("changes", []))

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
        except AssertionError:
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


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


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
        for url in (
            f"{sim_url}/_sim/stats",
            f"{stack.sink_url}/_sink/requests",
            f"{stack.api_url}/readyz",
        ):
            wait_for(lambda u=url: is_up(u), 60, what=url)
        wait_for(lambda: "ready" in stack.log("worker-poll"), 60, what="poll worker")
        wait_for(lambda: "ready" in stack.log("worker-delivery"), 60, what="delivery worker")
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
