"""The liveness heartbeat file (workers/heartbeat.py) that the Kubernetes probes stat.

No timing asserts: every wait is for a condition, under a generous bound.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from app.settings import Settings
from tests.conftest import ROOT, SECRET_KEY, ServiceUrls
from workers import heartbeat, runtime

EPOCH = 0.0  # an mtime no real touch can produce


def wait_until(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.02)


def mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return EPOCH


class _FakeClients:
    async def close(self) -> None:
        return None


async def _fake_create(settings: Settings, pool_size: int = 20) -> _FakeClients:
    return _FakeClients()


def test_runtime_loop_beats_and_a_blocked_loop_stops_beating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    interval = 0.05
    monkeypatch.setattr(heartbeat, "HEARTBEAT_EVERY_S", interval)
    monkeypatch.setattr(runtime.Clients, "create", _fake_create)
    path = tmp_path / "heartbeat"
    rt = runtime.Runtime(Settings(heartbeat_file=path, _env_file=None))  # type: ignore[call-arg]
    rt.start_beating()
    release = threading.Event()
    try:
        wait_until(path.exists, what="the first beat")
        os.utime(path, (EPOCH, EPOCH))
        wait_until(lambda: mtime(path) > EPOCH, what="a beat after the first")

        # Wedge the loop the way a blocking call inside a coroutine would.
        blocked = threading.Event()

        def block() -> None:
            blocked.set()
            release.wait()

        rt.loop.call_soon_threadsafe(block)
        assert blocked.wait(30)
        os.utime(path, (EPOCH, EPOCH))
        # Forty intervals: a beat that ran off the loop (a timer thread) would have landed.
        time.sleep(40 * interval)
        assert mtime(path) == EPOCH, "the heartbeat went on while the loop was blocked"

        release.set()
        wait_until(lambda: mtime(path) > EPOCH, what="beats to resume once the loop runs")
    finally:
        release.set()
        rt.close()


def test_runtime_without_the_setting_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime.Clients, "create", _fake_create)
    monkeypatch.chdir(tmp_path)
    rt = runtime.Runtime(Settings(_env_file=None))  # type: ignore[call-arg]
    rt.start_beating()
    rt.close()
    assert list(tmp_path.iterdir()) == []


def test_unwritable_heartbeat_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    beat = heartbeat.Heartbeat(tmp_path / "missing-dir" / "heartbeat", every=0)
    beat.beat()
    beat.beat()
    warnings = [r for r in caplog.records if "heartbeat" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.integration
@pytest.mark.parametrize(
    "role", [["worker", "--queues", "poll"], ["worker", "--queues", "delivery"], ["beat"]]
)
def test_role_process_beats_before_any_work(
    role: list[str], service_urls: ServiceUrls, tmp_path: Path
) -> None:
    """The real process, idle: the probe must see it alive without a single task."""
    path = tmp_path / "heartbeat"
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLINATOR_")}
    env |= {
        "POLLINATOR_DATABASE_URL": service_urls.database_url,
        # A Redis database of its own: beat's leader lock and anything it schedules stay
        # away from the other tests' broker.
        "POLLINATOR_REDIS_URL": urlsplit(service_urls.redis_url)._replace(path="/12").geturl(),
        "POLLINATOR_SECRET_KEY": SECRET_KEY,
        "POLLINATOR_HEARTBEAT_FILE": str(path),
        "POLLINATOR_DATA_DIR": str(tmp_path / "data"),
    }
    log = open(tmp_path / "role.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", *role],
        cwd=tmp_path,
        env=env | {"PYTHONPATH": str(ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: path.exists() or proc.poll() is not None, timeout=90, what="a heartbeat")
        assert proc.poll() is None, (tmp_path / "role.log").read_text()
        os.utime(path, (EPOCH, EPOCH))
        wait_until(lambda: mtime(path) > EPOCH, timeout=90, what="the next heartbeat")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
