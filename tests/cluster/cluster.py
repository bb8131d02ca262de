"""A Pollinator cluster on six emulated hosts, driven and judged from outside.

Hosts (network namespaces, see :mod:`tests.cluster.netns`):

==========  ==============  ====================================================
host        address         runs
==========  ==============  ====================================================
svc         10.213.0.10     PostgreSQL, Redis (store, watermarks and the broker)
ctl         10.213.0.11     API and the first beat
standby     10.213.0.12     the second beat (standby: the leader lock decides)
w1, w2      10.213.0.21/22  a poll worker and a delivery worker each
edge        10.213.0.30     the Keap simulator (the provider) and the receiver
==========  ==============  ====================================================

The simulator's change log is the ground truth and the receiver's log what was
delivered; :func:`app.loadtest.analysis.analyze_delivery` matches them. Scenario
code (``test_cluster.py``) perturbs the cluster through this class only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import redis

from app.client import InstanceSpec, OAuthApp, Pollinator, Simulator
from app.domain.pollconfig import DEFAULT_POLLER_CONFIGURATION
from app.loadtest import analysis
from app.loadtest.analysis import Change, JournalEntry, ReceivedEvent
from app.loadtest.monitor import JournalReader, ReceiverTail
from tests.cluster import netns
from tests.cluster.netns import Network

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
HOSTS = {"svc": 10, "ctl": 11, "standby": 12, "w1": 21, "w2": 22, "edge": 30}
PG_PORT, REDIS_PORT, API_PORT, SIM_PORT, RECEIVER_PORT = 5432, 6379, 8080, 8090, 8091
PG_USER = "pgserver"  # PostgreSQL refuses root; pgserver's own convention
OAUTH_CALLBACK = "https://cluster.invalid/oauth/callback"


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.25
) -> float:
    """Seconds until ``predicate`` held; raises after ``timeout``."""
    started = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - started
        except Exception:  # a server that is still starting answers with errors
            pass
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def _http_json(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        with contextlib.suppress(ValueError):
            return exc.code, json.loads(raw)
        return exc.code, raw.decode(errors="replace")


@dataclass
class Options:
    instances: int = 300
    refresh_minutes: float = 1.0
    provider_latency_ms: float = 300.0
    changes_per_second: float = 8.0
    resources: tuple[str, ...] = ("contacts", "orders")
    # The default schedule (5 s … 24 h, ~3 days in all) compressed 1,000 times.
    retry_schedule: str = "0.5,1,2,4,8,16,32,48,64"
    provider_timeout_s: float = 10.0


@dataclass
class Role:
    host: str
    argv: list[str]


@dataclass
class Cluster:
    work: Path
    options: Options = field(default_factory=Options)
    net: Network = field(default_factory=lambda: Network(HOSTS))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    redis_password: str = field(default_factory=lambda: secrets.token_hex(16))
    auth: str = ""
    accounts: dict[str, int] = field(default_factory=dict)  # simulator account -> instance id
    journal: JournalReader | None = None
    receiver: ReceiverTail | None = None
    pgdata: Path = Path()

    # --- addresses -------------------------------------------------------------------------

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres@{self.net['svc'].ip}:{PG_PORT}/pollinator"

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.redis_password}@{self.net['svc'].ip}:{REDIS_PORT}/0"

    @property
    def api_url(self) -> str:
        return f"http://{self.net['ctl'].ip}:{API_PORT}"

    @property
    def sim_url(self) -> str:
        return f"http://{self.net['edge'].ip}:{SIM_PORT}"

    @property
    def receiver_url(self) -> str:
        return f"http://{self.net['edge'].ip}:{RECEIVER_PORT}"

    def env(self) -> dict[str, str]:
        o = self.options
        return {
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "POLLINATOR_DATABASE_URL": self.database_url,
            "POLLINATOR_REDIS_URL": self.redis_url,
            "POLLINATOR_SECRET_KEY": "cluster-secret-key-0123456789abcdef012345",
            "POLLINATOR_DATA_DIR": str(self.work / "data"),
            "POLLINATOR_ALLOW_PRIVATE_CALLBACKS": "true",  # the receiver is on 10.213.0.30
            "POLLINATOR_MIN_REFRESH_MINUTES": "0.1",
            "POLLINATOR_PROVIDER_APP_RATE_PER_SECOND": "0",
            # One organization owns every instance here: no per-tenant fairness limits.
            "POLLINATOR_API_REQUESTS_PER_SECOND_PER_ORG": "0",
            "POLLINATOR_MAX_INSTANCES_PER_ORG": "1000000",
            "POLLINATOR_PROVIDER_TIMEOUT_SECONDS": f"{o.provider_timeout_s:g}",
            "POLLINATOR_DELIVERY_RETRY_SCHEDULE": o.retry_schedule,
            "POLLINATOR_INFUSIONSOFT_API_URL": f"{self.sim_url}/crm/rest/v1",
            "POLLINATOR_INFUSIONSOFT_TOKEN_URL": f"{self.sim_url}/token",
            "POLLINATOR_INFUSIONSOFT_AUTHORIZE_URL": f"{self.sim_url}/app/oauth/authorize",
        }

    # --- roles -----------------------------------------------------------------------------

    def roles(self) -> dict[str, Role]:
        ctl = self.net["ctl"].ip
        roles = {
            "api": Role("ctl", ["pollinator", "api", "--host", ctl, "--port", str(API_PORT)]),
            "beat-ctl": Role("ctl", ["pollinator", "beat"]),
            "beat-standby": Role("standby", ["pollinator", "beat"]),
        }
        for host in ("w1", "w2"):
            roles[f"poll-{host}"] = Role(host, ["pollinator", "worker", "--queues", "poll"])
            roles[f"delivery-{host}"] = Role(host, ["pollinator", "worker", "--queues", "delivery"])
        roles["simulator"] = Role(
            "edge",
            [
                "pollinator",
                "simulate",
                "--host",
                self.net["edge"].ip,
                "--port",
                str(SIM_PORT),
                "--latency-ms",
                f"{self.options.provider_latency_ms:g}",
                "--seed",
                "7",
                "--throttle-per-second",
                "0",
                "--throttle-per-minute",
                "0",
                "--quota-per-day",
                "0",
            ],
        )
        roles["receiver"] = Role(
            "edge",
            [
                sys.executable,
                "-m",
                "app.loadtest.receiver",
                "--host",
                self.net["edge"].ip,
                "--port",
                str(RECEIVER_PORT),
                "--out",
                str(self.work / "received.jsonl"),
            ],
        )
        return roles

    def log(self, name: str) -> Path:
        return self.work / "logs" / f"{name}.log"

    def start_role(self, name: str) -> None:
        role = self.roles()[name]
        old = self.procs.pop(name, None)
        if old is not None:  # reap the process this role had before (killed with its host)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(old.pid, signal.SIGKILL)
            old.wait(10)
        self.procs[name] = self.net.spawn(role.host, role.argv, self.env(), self.log(name))

    def roles_on(self, host: str) -> list[str]:
        return [name for name, role in self.roles().items() if role.host == host]

    def start_host(self, host: str) -> None:
        """Start (again) every role of ``host``: the machine came back."""
        for name in self.roles_on(host):
            self.start_role(name)

    def signal_role(self, name: str, sig: signal.Signals) -> None:
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def died(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]

    # --- services on svc -------------------------------------------------------------------

    def _pg_bin(self, name: str) -> str:
        import pgserver._commands as pgcommands
        from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions

        bin_path = Path(pgcommands.POSTGRES_BIN_PATH)
        ensure_prefix_permissions(bin_path)
        ensure_folder_permissions(bin_path, 0o555)
        ensure_folder_permissions(bin_path.parent / "lib", 0o444)
        return str(bin_path / name)

    def start_postgres(self) -> None:
        from pgserver.utils import ensure_user_exists

        ensure_user_exists(PG_USER)
        if not (self.pgdata / "PG_VERSION").exists():
            owner = pwd.getpwnam(PG_USER)
            self.pgdata.mkdir(parents=True, exist_ok=True)
            os.chown(self.pgdata, owner.pw_uid, owner.pw_gid)
            subprocess.run(
                [
                    "runuser",
                    "-u",
                    PG_USER,
                    "--",
                    self._pg_bin("initdb"),
                    "-D",
                    str(self.pgdata),
                    "--auth=trust",
                    "-U",
                    "postgres",
                    "--encoding=utf8",
                ],
                check=True,
                capture_output=True,
            )
            # Trust the cluster's own subnet (the test hosts), nothing else.
            with (self.pgdata / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {netns.SUBNET}.0/24 trust\n")
        self.procs["postgres"] = self.net.spawn(
            "svc",
            [
                self._pg_bin("postgres"),
                "-D",
                str(self.pgdata),
                "-p",
                str(PG_PORT),
                "-c",
                f"listen_addresses={self.net['svc'].ip}",
                "-c",
                f"unix_socket_directories={self.pgdata}",
                "-c",
                "max_connections=400",
                "-c",
                "fsync=off",
            ],
            self.env(),
            self.log("postgres"),
            user=PG_USER,
        )
        admin = f"postgresql://postgres@{self.net['svc'].ip}:{PG_PORT}/postgres"

        def answers() -> bool:
            with psycopg.connect(admin, connect_timeout=2):
                return True

        wait_for(answers, 60, "PostgreSQL on svc")

    def stop_postgres(self) -> None:
        """A clean, fast shutdown (SIGINT), as ``pg_ctl stop -m fast`` does."""
        proc = self.procs.pop("postgres")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        proc.wait(60)

    def start_redis(self) -> None:
        from app.embedded import _redis_binary

        workdir = self.work / "redis"
        workdir.mkdir(parents=True, exist_ok=True)
        self.procs["redis"] = self.net.spawn(
            "svc",
            [
                _redis_binary(),
                "--bind",
                self.net["svc"].ip,
                "--port",
                str(REDIS_PORT),
                "--requirepass",
                self.redis_password,
                "--dir",
                str(workdir),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--daemonize",
                "no",
            ],
            self.env(),
            self.log("redis"),
        )
        client = redis.Redis.from_url(self.redis_url, socket_timeout=2)
        try:
            wait_for(lambda: bool(client.ping()), 30, "Redis on svc")
        finally:
            client.close()

    def kill_redis_and_lose_its_data(self) -> None:
        proc = self.procs.pop("redis")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        shutil.rmtree(self.work / "redis", ignore_errors=True)

    # --- the whole cluster -----------------------------------------------------------------

    def start(self) -> None:
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        # PostgreSQL's own user must reach its data dir: a world-traversable temp dir.
        self.pgdata = Path(tempfile.mkdtemp(prefix="pollinator-cluster-pg-")) / "pgdata"
        self.pgdata.parent.chmod(0o755)
        self.net.up()
        self.start_postgres()
        admin = f"postgresql://postgres@{self.net['svc'].ip}:{PG_PORT}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE pollinator")
        self.start_redis()
        subprocess.run(
            [sys.executable, "-m", "app.cli", "migrate"],
            env=self.env(),
            check=True,
            capture_output=True,
            timeout=120,
        )
        for name in self.roles():
            self.start_role(name)
        wait_for(lambda: _http_json("GET", f"{self.sim_url}/_sim/stats")[0] == 200, 60, "simulator")
        wait_for(lambda: _http_json("GET", f"{self.api_url}/readyz")[0] == 200, 90, "the API")
        org = subprocess.run(
            [sys.executable, "-m", "app.cli", "org", "create", "cluster"],
            env=self.env(),
            check=True,
            capture_output=True,
            timeout=120,
        )
        data = json.loads(org.stdout)
        self.auth = f"User {data['userSecret']}, Organization {data['organizationSecret']}"
        self.journal = JournalReader(self.redis_url)
        self.receiver = ReceiverTail(self.work / "received.jsonl", self._account_of_path)

    def close(self) -> None:
        if self.journal is not None:
            with contextlib.suppress(Exception):
                self.journal.close()
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        self.net.close()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        if self.pgdata != Path():
            shutil.rmtree(self.pgdata.parent, ignore_errors=True)

    # --- instances and changes -------------------------------------------------------------

    def _account_of_path(self, path: str) -> str | None:
        account = path.rsplit("/", 1)[-1]
        return account if account in self.accounts else None

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return _http_json(
            method, f"{self.api_url}/elements/api-v2{path}", body, {"Authorization": self.auth}
        )

    def create_instance(self, account: str) -> int:
        """Consent at the simulator, then ``POST /instances`` (from a pool thread)."""
        spec = InstanceSpec(
            app=OAuthApp("cluster-app", "cluster-secret", OAUTH_CALLBACK),
            callback_url=f"{self.receiver_url}/cb/{account}",
            name=f"cluster {account}",
            refresh_minutes=self.options.refresh_minutes,
            poller={r: DEFAULT_POLLER_CONFIGURATION[r] for r in self.options.resources},
        )

        async def create() -> dict[str, Any]:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
                api = Pollinator(http, self.api_url, self.auth)
                return await api.create_authorized(Simulator(http, self.sim_url), spec, account)

        instance_id = int(asyncio.run(create())["id"])
        self.accounts[account] = instance_id
        return instance_id

    def create_instances(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(self.create_instance, [f"cl-{i}" for i in range(self.options.instances)]))

    def mutate(self, changes_per_second: float) -> None:
        status, data = _http_json(
            "POST",
            f"{self.sim_url}/_sim/mutator",
            {
                "changesPerSecond": changes_per_second,
                "resources": list(self.options.resources),
                "createRatio": 0.3,
                "accounts": list(self.accounts),
            },
        )
        assert status < 300, data

    def fault(self, kind: str, seconds: float, delay_seconds: float = 0.0) -> None:
        body: dict[str, Any] = {"kind": kind, "seconds": seconds, "probability": 1.0}
        if delay_seconds:
            body["delaySeconds"] = delay_seconds
        status, data = _http_json("POST", f"{self.sim_url}/_sim/faults", body)
        assert status < 300, data

    def clear_faults(self) -> None:
        _http_json("DELETE", f"{self.sim_url}/_sim/faults")

    def changes(self) -> list[Change]:
        out: list[Change] = []
        for account in self.accounts:
            status, items = _http_json("GET", f"{self.sim_url}/_sim/accounts/{account}/changes")
            assert status == 200, items
            out += [analysis.parse_change(account, item) for item in items]
        return sorted(out, key=lambda c: c.at)

    def received(self) -> list[ReceivedEvent]:
        assert self.receiver is not None
        self.receiver.poll()
        return self.receiver.events

    def polls(self) -> list[JournalEntry]:
        assert self.journal is not None
        with contextlib.suppress(redis.RedisError):
            self.journal.poll()
        return self.journal.entries

    def all_due_now(self) -> None:
        with psycopg.connect(self.database_url) as conn:
            conn.execute("UPDATE instances SET next_poll_at = now() WHERE deleted_at IS NULL")

    def sql(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, connect_timeout=5) as conn:
            return conn.execute(statement, params).fetchall()

    def in_flight_polls(self) -> set[int]:
        """Instances whose poll lease is held right now."""
        client = redis.Redis.from_url(self.redis_url, socket_timeout=5)
        try:
            return {int(k.rsplit(b":", 1)[1]) for k in client.scan_iter("pollinator:lock:poll:*")}
        finally:
            client.close()

    def completed_after(self, ids: Iterable[int], since: float) -> set[int]:
        """Which of ``ids`` finished a poll (success or failure) after ``since``.

        Read from PostgreSQL (each poll's ``last_polled_at``): the poll journal lives in
        Redis, which one scenario wipes, and its writes are best effort.
        """
        wanted = list(set(ids))
        rows = self.sql(
            "SELECT DISTINCT instance_id FROM poll_states"
            " WHERE instance_id = ANY(%s) AND last_polled_at > to_timestamp(%s)",
            wanted,
            since,
        )
        return {int(r[0]) for r in rows}

    def respread(self) -> None:
        """Spread next polls over one interval again, as creation did (a burst bunched them)."""
        interval = self.options.refresh_minutes * 60
        with psycopg.connect(self.database_url) as conn:
            conn.execute(
                "UPDATE instances SET next_poll_at = now()"
                " + make_interval(secs => ((id * 0.6180339887) %% 1) * %s)"
                " WHERE deleted_at IS NULL",
                (interval,),
            )

    def retry_failed_deliveries(self) -> int:
        total = 0
        for instance_id in self.accounts.values():
            status, data = self.api(
                "POST", f"/instances/{instance_id}/deliveries/retry?status=failed"
            )
            if status == 202 and isinstance(data, dict):
                total += int(data.get("count", 0))
        return total
