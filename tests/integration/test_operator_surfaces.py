"""Operator surfaces are closed by default: the embedded Redis and Flower ask for credentials."""

from __future__ import annotations

import base64
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from redis.exceptions import AuthenticationError, ResponseError

from app.embedded import REDIS_PASSWORD_FILE, free_port, start_redis
from app.settings import SettingsError, load_settings
from app.supervisor import flower_child
from tests.conftest import ROOT, ServiceUrls

pytestmark = pytest.mark.integration


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def refuses_without_password(url: str) -> bool:
    """An unauthenticated client's command is refused (NOAUTH)."""
    parsed = redis.Redis.from_url(url).connection_pool.connection_kwargs
    anonymous = redis.Redis(host=parsed["host"], port=parsed["port"])
    try:
        anonymous.set("pollinator:probe", "x")
    except AuthenticationError:
        return True
    except ResponseError as exc:
        return "NOAUTH" in str(exc)
    finally:
        anonymous.close()
    return False


def test_embedded_redis_requires_its_password(tmp_path: Path) -> None:
    url, stop = start_redis(tmp_path)
    try:
        assert refuses_without_password(url)
        with redis.Redis.from_url(url) as client:
            assert client.ping()
    finally:
        stop()
    password_file = tmp_path / REDIS_PASSWORD_FILE
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert f":{password_file.read_text().strip()}@" in url
    # The password is kept across runs (runtime.json and running roles stay valid).
    again, stop = start_redis(tmp_path)
    stop()
    assert again.split("@")[0] == url.split("@")[0]


def test_services_up_prints_authenticated_urls_and_keeps_files_private(
    tmp_path: Path, service_urls: ServiceUrls
) -> None:
    """``pollinator services up``: the Redis export line carries the password, the data
    dir is 0700 and what Redis writes under it (umask) is owner-only."""
    data = tmp_path / "data"
    env = {
        **os.environ,
        "POLLINATOR_DATA_DIR": str(data),
        # Only Redis is started; PostgreSQL is the session's.
        "POLLINATOR_DATABASE_URL": service_urls.database_url,
    }
    env.pop("POLLINATOR_REDIS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "services", "up"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        [redis_line] = [line for line in lines if "POLLINATOR_REDIS_URL" in line]
        url = redis_line.strip().split("=", 1)[1].strip("'")
        assert refuses_without_password(url)
        with redis.Redis.from_url(url) as client:
            client.set("pollinator:probe", "x")  # makes Redis append to its AOF
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert stat.S_IMODE((data / REDIS_PASSWORD_FILE).stat().st_mode) == 0o600
        written = list((data / "redis").rglob("*"))
        assert written
        loose = [p for p in written if stat.S_IMODE(p.stat().st_mode) & 0o077]
        assert loose == []
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def _get(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def test_flower_as_up_starts_it_requires_basic_auth(
    tmp_path: Path, service_urls: ServiceUrls
) -> None:
    pytest.importorskip("flower")
    auth = "pollinator:flower-test-pw-4e2a"
    port = free_port()
    child = flower_child(port, auth)
    env = {
        **os.environ,
        "POLLINATOR_REDIS_URL": service_urls.redis_url,
        "POLLINATOR_DATABASE_URL": service_urls.database_url,
    }
    env.pop("FLOWER_UNAUTHENTICATED_API", None)
    child.start(env, tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: _get(f"{base}/") != 0 or not child.alive()), "flower silent"
        assert child.alive(), child.log_path and child.log_path.read_text()
        assert child.proc is not None
        cmdline = Path(f"/proc/{child.proc.pid}/cmdline").read_bytes()
        assert b"flower-test-pw" not in cmdline  # handed over in the environment, not argv
        for path in ("/", "/workers", "/api/workers", "/api/tasks"):
            assert _get(f"{base}{path}") == 401, path
            assert _get(f"{base}{path}", "pollinator:wrong") == 401, path
            assert _get(f"{base}{path}", auth) == 200, path
    finally:
        child.signal(signal.SIGTERM)
        if child.proc is not None:
            child.proc.wait(30)


@pytest.mark.parametrize("value", ["", "nopassword", ":pw", "user:", "a:b,c:d"])
def test_flower_basic_auth_setting_must_be_one_user_and_password(value: str) -> None:
    with pytest.raises(SettingsError, match="POLLINATOR_FLOWER_BASIC_AUTH"):
        load_settings(flower_basic_auth=value)
    assert load_settings(flower_basic_auth="ops:s3cret").flower_basic_auth == "ops:s3cret"
