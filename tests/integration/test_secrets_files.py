"""What ``pollinator up`` writes under the data dir is owner-only, old files included."""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.embedded import load_or_create_secret, secure_data_dir
from app.settings import RUNTIME_FILE
from app.supervisor import Child, Supervisor, load_or_create_secret_key, write_runtime_env


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """A umask that would leave new files world-readable: modes must not depend on it."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_existing_data_dir_is_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "logs").mkdir(parents=True)
    (data / "redis" / "appendonlydir").mkdir(parents=True)
    files = [data / "logs" / "api.log", data / "runtime.json", data / "redis" / "redis.log"]
    for path in files:
        path.write_text("x")
        path.chmod(0o644)
    (data / "logs" / "run.sh").write_text("x")
    (data / "logs" / "run.sh").chmod(0o755)
    for directory in (data, data / "logs", data / "redis", data / "redis" / "appendonlydir"):
        directory.chmod(0o755)
    (data / "link").symlink_to("/etc/hostname")

    secure_data_dir(data)

    assert mode(data) == 0o700
    assert mode(data / "logs") == mode(data / "redis" / "appendonlydir") == 0o700
    assert all(mode(path) == 0o600 for path in files)
    assert mode(data / "logs" / "run.sh") == 0o700  # owner bits are kept
    assert mode(Path("/etc/hostname")) & 0o004  # a symlink's target is not touched


def test_secret_files_are_created_owner_only_and_kept(tmp_path: Path, loose_umask: None) -> None:
    key = load_or_create_secret_key(tmp_path)
    assert mode(tmp_path / "secret_key") == 0o600
    assert load_or_create_secret_key(tmp_path) == key

    old = tmp_path / "old_secret"
    old.write_text("kept-value\n")
    old.chmod(0o644)
    assert load_or_create_secret(old, lambda: "new") == "kept-value"
    assert mode(old) == 0o600


def test_role_logs_and_runtime_json_are_owner_only(tmp_path: Path, loose_umask: None) -> None:
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o755)
    old_log = logs / "old.log"
    old_log.write_text("from an earlier run\n")
    old_log.chmod(0o644)
    children = [Child(name, [sys.executable, "-c", "print('hello')"]) for name in ("old", "fresh")]
    supervisor = Supervisor(children, dict(os.environ), logs)
    supervisor.start_all()
    for child in children:
        assert child.proc is not None
        assert child.proc.wait(30) == 0
    assert mode(logs) == 0o700
    assert mode(old_log) == mode(logs / "fresh.log") == 0o600
    assert (logs / "fresh.log").read_text() == "hello\n"

    runtime = tmp_path / RUNTIME_FILE
    runtime.write_text("{}")
    runtime.chmod(0o644)
    values = {"POLLINATOR_REDIS_URL": "redis://:pw@127.0.0.1:1/0", "POLLINATOR_SECRET_KEY": "k"}
    write_runtime_env(tmp_path, values)
    assert mode(runtime) == 0o600
    assert json.loads(runtime.read_text()) == {"POLLINATOR_REDIS_URL": "redis://:pw@127.0.0.1:1/0"}
