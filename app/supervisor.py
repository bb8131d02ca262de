"""``pollinator up``: every role on one machine, supervised.

Starts embedded PostgreSQL and Redis when no URLs are given, generates the
secret key into the data dir once, migrates, then runs each role as a child
process (restarting one that dies) until Ctrl-C / SIGTERM stops them all.
With ``--demo`` it also runs the Keap simulator and a callback sink and creates
a demo organization and instance whose events arrive at the sink.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.embedded import (
    PRIVATE_DIR_MODE,
    PRIVATE_UMASK,
    EmbeddedError,
    ensure_services,
    free_port,
    load_or_create_secret,
    secure_data_dir,
    write_private,
)
from app.procs import Check, NotReady, Process, port_free, port_holder, stop_all, wait_until
from app.settings import RUNTIME_FILE, load_settings_or_exit

RESTART_BACKOFF_S = (1, 2, 5, 10, 30)
API_READY_TIMEOUT_S = 60.0
# The demo's simulator and sink take these when free, else any free port (and say which).
SIMULATOR_PORT = 8090
SINK_PORT = 8091
FLOWER_AUTH_FILE = "flower_basic_auth"
FLOWER_USER = "pollinator"


def _say(message: str) -> None:
    print(message, flush=True)  # noqa: T201


def load_or_create_secret_key(data_dir: Path) -> str:
    """The key that encrypts secrets at rest, generated once into the data dir (mode 0600)."""
    return load_or_create_secret(data_dir / "secret_key", lambda: secrets.token_urlsafe(48))


def load_or_create_flower_auth(data_dir: Path) -> str:
    """Flower's ``user:password`` when none is configured, generated once (mode 0600).

    Flower shows every task's arguments and can revoke tasks and shut workers down, so
    ``up`` never runs it open, not even on loopback (every local user can reach that).
    """
    return load_or_create_secret(
        data_dir / FLOWER_AUTH_FILE, lambda: f"{FLOWER_USER}:{secrets.token_urlsafe(24)}"
    )


@dataclass
class Child:
    """One supervised role: what to run, and its current process (restarted when it dies)."""

    name: str
    argv: list[str]
    # Variables only this child gets (Flower's credentials).
    env: dict[str, str] = field(default_factory=dict, repr=False)
    proc: Process | None = None
    restarts: int = 0
    next_start: float = 0.0
    log_path: Path | None = field(default=None, repr=False)

    def start(self, env: dict[str, str], log_dir: Path) -> None:
        # Its own session (a stop reaches what it forks), SIGTERM from the kernel if this
        # supervisor dies without stopping it (SIGKILL, OOM), an owner-only log.
        self.log_path = log_dir / f"{self.name}.log"
        self.proc = Process.start(self.name, self.argv, self.log_path, env={**env, **self.env})

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def signal(self, sig: int) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)


def _pollinator(*args: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", *args]


def flower_child(port: int, basic_auth: str) -> Child:
    """Flower on loopback behind HTTP basic auth (UI and ``/api/*`` alike).

    The credentials go in ``FLOWER_BASIC_AUTH`` rather than ``--basic_auth=``, where
    any local user would read them in ``ps``.
    """
    return Child(
        "flower",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.celery_entry",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
            "--max_tasks=10000",
            # A busy worker answers the queue inspection slowly; at 1 s (the default) the
            # Broker page listed only the queues of the workers that answered in time.
            "--inspect_timeout=5000",
            # Flower would otherwise switch every worker's task events on: the batch
            # messages and the sweeper would be rows again, beside the per-poll ones.
            "--enable_events=False",
        ],
        env={"FLOWER_BASIC_AUTH": basic_auth},
    )


@dataclass(frozen=True)
class DemoPorts:
    simulator: int
    sink: int


def demo_ports(host: str = "127.0.0.1") -> DemoPorts:
    """The usual ports when free; otherwise free ones, so a second stack never collides."""
    taken: set[int] = set()

    def pick(preferred: int) -> int:
        port = preferred if port_free(host, preferred) else free_port(host)
        while port in taken:
            port = free_port(host)
        taken.add(port)
        return port

    return DemoPorts(pick(SIMULATOR_PORT), pick(SINK_PORT))


class PortTaken(RuntimeError):
    """A port ``up`` must listen on is held by another process."""


def check_ports(ports: dict[str, tuple[str, int]]) -> None:
    """Refuse to start when a configured port is taken, naming it and its holder.

    Checked before anything starts: a role that cannot bind would restart forever
    while another process answered its readiness checks.
    """
    for setting, (host, port) in ports.items():
        if port and not port_free(host, port):
            raise PortTaken(
                f"pollinator: port {port} ({setting}) is in use by {port_holder(port)};"
                f" stop it or set {setting}"
            )


def roles(
    data_dir: Path, demo: DemoPorts | None, flower_port: int, flower_auth: str
) -> list[Child]:
    """Every process ``up`` runs."""
    children = [
        Child("api", _pollinator("api")),
        Child("beat", _pollinator("beat")),
        Child("worker-poll", _pollinator("worker", "--queues", "poll")),
        Child("worker-delivery", _pollinator("worker", "--queues", "delivery")),
        flower_child(flower_port, flower_auth),
    ]
    if demo is not None:
        children += [
            Child("simulator", _pollinator("simulate", "--port", str(demo.simulator))),
            Child(
                "sink",
                _pollinator(
                    "sink", "--port", str(demo.sink), "--out", str(data_dir / "sink.jsonl")
                ),
            ),
        ]
    return children


class Supervisor:
    """Starts children, restarts the ones that die (with backoff), stops all on a signal."""

    def __init__(self, children: list[Child], env: dict[str, str], log_dir: Path) -> None:
        self.children = children
        self.env = env
        self.log_dir = log_dir
        self.stopping = False

    def start_all(self) -> None:
        self.log_dir.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        os.chmod(self.log_dir, PRIVATE_DIR_MODE)
        for child in self.children:
            child.start(self.env, self.log_dir)

    def tick(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.alive() or self.stopping:
                continue
            if child.next_start == 0.0:
                code = child.proc.returncode if child.proc else None
                delay = RESTART_BACKOFF_S[min(child.restarts, len(RESTART_BACKOFF_S) - 1)]
                _say(
                    f"pollinator: {child.name} exited ({code}); restarting in {delay}s "
                    f"(log: {child.log_path})"
                )
                child.next_start = now + delay
            elif now >= child.next_start:
                child.restarts += 1
                child.next_start = 0.0
                child.start(self.env, self.log_dir)

    def stop_all(self) -> None:
        self.stopping = True
        stop_all(child.proc for child in self.children if child.proc is not None)


def main(argv: list[str]) -> int:
    """Entry point of ``pollinator up``."""
    parser = argparse.ArgumentParser(prog="pollinator up")
    parser.add_argument(
        "--demo",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the simulator, a sink and a demo instance (default on)",
    )
    args = parser.parse_args(argv)
    base = load_settings_or_exit()
    data_dir = base.data_dir.resolve()
    # Everything this process and its children create (logs, the Redis append-only file,
    # the sink's records, demo credentials) is owner-only; what is there already is tightened.
    os.umask(PRIVATE_UMASK)
    secure_data_dir(data_dir)
    try:
        check_ports(
            {
                "POLLINATOR_API_PORT": (base.api_host, base.api_port),
                "POLLINATOR_FLOWER_PORT": ("127.0.0.1", base.flower_port),
            }
        )
    except PortTaken as exc:
        _say(str(exc))
        return 1
    demo = demo_ports() if args.demo else None
    # The API echoes this run's id in /healthz, so "ready" means *our* API answered.
    run_id = secrets.token_hex(8)
    try:
        flower_auth = base.flower_basic_auth or load_or_create_flower_auth(data_dir)
        services = ensure_services(base.database_url, base.redis_url, data_dir)
    except EmbeddedError as exc:
        _say(f"pollinator: {exc}")
        return 1
    overrides: dict[str, Any] = {
        "POLLINATOR_DATABASE_URL": services.database_url,
        "POLLINATOR_REDIS_URL": services.redis_url,
        "POLLINATOR_SECRET_KEY": base.secret_key or load_or_create_secret_key(data_dir),
        "POLLINATOR_DATA_DIR": str(data_dir),
        "POLLINATOR_ALLOW_PRIVATE_CALLBACKS": os.environ.get(
            "POLLINATOR_ALLOW_PRIVATE_CALLBACKS", "true"
        ),
        "POLLINATOR_RUN_ID": run_id,
    }
    if demo is not None:
        sim = f"http://127.0.0.1:{demo.simulator}"
        overrides.update(
            {
                "POLLINATOR_INFUSIONSOFT_API_URL": f"{sim}/crm/rest/v1",
                "POLLINATOR_INFUSIONSOFT_TOKEN_URL": f"{sim}/token",
                "POLLINATOR_INFUSIONSOFT_AUTHORIZE_URL": f"{sim}/app/oauth/authorize",
            }
        )
    env = {**os.environ, **{k: str(v) for k, v in overrides.items()}}
    write_runtime_env(data_dir, overrides)
    from app.migrate import upgrade

    upgrade(services.database_url, overrides["POLLINATOR_SECRET_KEY"])
    supervisor = Supervisor(
        roles(data_dir, demo, base.flower_port, flower_auth), env, data_dir / "logs"
    )
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # SIGHUP: the terminal closed
        signal.signal(sig, _stop)
    flower_login = "from POLLINATOR_FLOWER_BASIC_AUTH" if base.flower_basic_auth else flower_auth
    code = 0
    try:
        supervisor.start_all()
        api_url = f"http://{base.api_host}:{base.api_port}"
        api = next(c.proc for c in supervisor.children if c.name == "api")
        try:
            wait_until(
                own_api(api_url, run_id), API_READY_TIMEOUT_S, watch=api, stopped=lambda: stop
            )
        except NotReady:
            if not stop:
                why = (
                    f"exited with {api.returncode} before it answered on port {base.api_port}"
                    if api is not None and not api.alive()
                    else f"did not come up on port {base.api_port}"
                    f" ({port_holder(base.api_port)} answers there)"
                )
                _say(f"pollinator: the API {why}; see {data_dir / 'logs'}/api.log")
                code = 1
            return code
        _say(
            f"Pollinator is up.\n  API      {api_url}/elements/api-v2"
            f"  (docs: {api_url}/openapi.json)"
            f"\n  health   {api_url}/readyz\n  flower   http://127.0.0.1:{base.flower_port}"
            f"  (basic auth: {flower_login})"
            f"\n  metrics  {api_url}/metrics\n  logs     {data_dir / 'logs'}"
            f"\n  services export POLLINATOR_DATABASE_URL='{services.database_url}'"
            f"\n           export POLLINATOR_REDIS_URL='{services.redis_url}'"
        )
        if demo is not None:
            from app.demo import setup_demo

            _say(setup_demo(api_url, services.database_url, data_dir, demo.simulator, demo.sink))
        _say("Press Ctrl-C to stop.")
        while not stop:
            supervisor.tick()
            time.sleep(0.5)
    finally:
        _say("pollinator: stopping...")
        supervisor.stop_all()
        services.stop()
        (data_dir / RUNTIME_FILE).unlink(missing_ok=True)
    return code


def own_api(api_url: str, run_id: str) -> Check:
    """``/healthz`` answers with this run's id (another process on the port never does)."""
    import urllib.request

    def test() -> bool:
        try:
            with urllib.request.urlopen(f"{api_url}/healthz", timeout=2) as resp:
                return bool(json.loads(resp.read() or b"{}").get("run") == run_id)
        except (OSError, ValueError, AttributeError):
            return False

    return Check(test, f"this run's API at {api_url}/healthz")


def write_runtime_env(data_dir: Path, values: dict[str, Any]) -> None:
    """``.data/runtime.json``: the URLs of the running stack, for CLI commands run beside it.

    The URLs carry the embedded Redis password, so the file is owner-only (0600).
    """
    public = {k: v for k, v in values.items() if k != "POLLINATOR_SECRET_KEY"}
    write_private(data_dir / RUNTIME_FILE, json.dumps(public, indent=2))
