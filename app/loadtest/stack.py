"""The processes of a load test: services, simulator, receiver, API, beat, workers.

Every child is an :class:`app.procs.Process`: in its own session (process group), so
stopping it also stops whatever it forked, and stopped by the kernel if the load test
dies; :meth:`Stack.close` is safe to call from ``finally`` however far start-up got.
Embedded PostgreSQL/Redis live in a dedicated data dir (``.data/loadtest``) so a load
test never touches ``pollinator up``'s data. Each run gets a fresh database
(dropped afterwards unless kept) and a flushed Redis database: watermarks, locks and
queues are keyed by instance id, and ids restart at 1 in a fresh database.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from app.embedded import (
    EmbeddedServices,
    drop_database,
    ensure_services,
    free_port,
    scratch_database,
)
from app.procs import Process, http_ok, log_contains, stop_all, wait_until


@dataclass
class StackOptions:
    out_dir: Path
    data_dir: Path
    database_url: str | None
    redis_url: str | None
    provider_latency_ms: float
    min_refresh_minutes: float
    poll_workers: int = 1
    delivery_workers: int = 1
    env: dict[str, str] = field(default_factory=dict)  # extra POLLINATOR_* settings
    keep_database: bool = False
    sim_seed: int = 1


@dataclass
class Stack:
    """A running (or partly started) load-test stack."""

    options: StackOptions
    env: dict[str, str] = field(default_factory=dict)
    sim_url: str = ""
    api_url: str = ""
    receiver_url: str = ""
    receiver_log: Path = Path()
    database_url: str = ""
    redis_url: str = ""
    procs: dict[str, Process] = field(default_factory=dict)
    services: EmbeddedServices | None = None
    embedded_pgdata: Path | None = None
    _drop: tuple[str, str] | None = None

    @property
    def log_dir(self) -> Path:
        return self.options.out_dir / "logs"

    # --- start -------------------------------------------------------------------------------

    def start_services(self) -> None:
        opts = self.options
        self.services = ensure_services(opts.database_url, opts.redis_url, opts.data_dir)
        if opts.database_url is None:
            self.embedded_pgdata = (opts.data_dir / "postgres").resolve()
        url, name = scratch_database(self.services.database_url, "pollinator_lt")
        self._drop = (self.services.database_url, name)
        self.database_url = url
        self.redis_url = self.services.redis_url
        from app.migrate import upgrade

        upgrade(url)
        import redis

        client = redis.Redis.from_url(self.redis_url)
        try:
            client.flushdb()
        finally:
            client.close()

    def start_simulator(self, extra_args: list[str]) -> None:
        port = free_port()
        self.sim_url = f"http://127.0.0.1:{port}"
        args = ["simulate", "--port", str(port), "--seed", str(self.options.sim_seed)]
        args += ["--latency-ms", str(self.options.provider_latency_ms)]
        args += ["--throttle-per-second", "0", "--throttle-per-minute", "0", "--quota-per-day", "0"]
        self._start("simulator", [sys.executable, "-m", "app.cli", *args, *extra_args], os.environ)

    def start_receiver(self) -> None:
        port = free_port()
        self.receiver_url = f"http://127.0.0.1:{port}"
        self.receiver_log = self.options.out_dir / "callbacks.jsonl"
        self.receiver_log.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "app.loadtest.receiver", "--port", str(port)]
        self._start("receiver", [*argv, "--out", str(self.receiver_log)], os.environ)

    def start_pollinator(self, secret_key: str) -> None:
        opts = self.options
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "POLLINATOR_DATABASE_URL": self.database_url,
            "POLLINATOR_REDIS_URL": self.redis_url,
            "POLLINATOR_SECRET_KEY": secret_key,
            "POLLINATOR_DATA_DIR": str(opts.data_dir.resolve()),
            "POLLINATOR_MIN_REFRESH_MINUTES": f"{opts.min_refresh_minutes:g}",
            "POLLINATOR_ALLOW_PRIVATE_CALLBACKS": "true",
            "POLLINATOR_INFUSIONSOFT_API_URL": f"{self.sim_url}/crm/rest/v1",
            "POLLINATOR_INFUSIONSOFT_TOKEN_URL": f"{self.sim_url}/token",
            "POLLINATOR_INFUSIONSOFT_AUTHORIZE_URL": f"{self.sim_url}/app/oauth/authorize",
            "POLLINATOR_API_HOST": "127.0.0.1",
            "POLLINATOR_API_PORT": str(port),
            # One organization stands for every tenant of the load: no per-org fairness caps.
            "POLLINATOR_API_REQUESTS_PER_SECOND_PER_ORG": "0",
            "POLLINATOR_MAX_INSTANCES_PER_ORG": "10000000",
            **opts.env,
        }
        if "POLLINATOR_BROKER_URL" not in opts.env:  # the run's Redis, never an inherited one
            self.env.pop("POLLINATOR_BROKER_URL", None)
        cli = [sys.executable, "-m", "app.cli"]
        self._start("api", [*cli, "api"], self.env)
        self._start("beat", [*cli, "beat"], self.env)
        for i in range(opts.poll_workers):
            suffix = "" if opts.poll_workers == 1 else f"-{i + 1}"
            self._start(f"worker-poll{suffix}", [*cli, "worker", "--queues", "poll"], self.env)
        for i in range(opts.delivery_workers):
            suffix = "" if opts.delivery_workers == 1 else f"-{i + 1}"
            argv = [*cli, "worker", "--queues", "delivery"]
            self._start(f"worker-delivery{suffix}", argv, self.env)

    def wait_ready(self, timeout: float = 90.0) -> None:
        for name, url in (
            ("simulator", f"{self.sim_url}/_sim/stats"),
            ("receiver", f"{self.receiver_url}/_lt/stats"),
            ("api", f"{self.api_url}/readyz"),
        ):
            if name in self.procs:
                wait_until(http_ok(url), timeout, watch=self.procs[name])
        for name, proc in self.procs.items():
            if name.startswith("worker-"):
                wait_until(log_contains(proc, " ready"), timeout, watch=proc)

    def _start(self, name: str, argv: list[str], env: Mapping[str, str]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs[name] = Process.start(name, argv, self.log_dir / f"{name}.log", env=env)

    # --- inspect -----------------------------------------------------------------------------

    def pid_of(self, name: str) -> int | None:
        proc = self.procs.get(name)
        return proc.pid if proc is not None and proc.alive() else None

    def died(self) -> list[Process]:
        """Children that exited on their own (a crash during the run)."""
        return [p for p in self.procs.values() if not p.alive()]

    # --- stop --------------------------------------------------------------------------------

    def stop(self, names: list[str]) -> None:
        """SIGTERM the process groups, then SIGKILL what is still there after the grace."""
        stop_all([self.procs.pop(n) for n in names if n in self.procs])

    def stop_pollinator(self) -> None:
        self.stop([n for n in self.procs if n == "api" or n == "beat" or n.startswith("worker-")])

    def close(self) -> None:
        """Stop every child, drop the run's database, stop embedded services. Idempotent."""
        self.stop(list(self.procs))
        if self._drop is not None and not self.options.keep_database:
            with contextlib.suppress(Exception):
                drop_database(*self._drop)
            self._drop = None
        if self.services is not None:
            self.services.stop()
            self.services = None
