"""A worker whose settings cannot work fails at start, saying why, not at its first task.

Before the runtime was opened at ``worker_init`` it was opened at ``worker_ready``, where
Celery logs and swallows a handler's exception: the worker ran on, consumed, and failed
every task with the same error.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SECRET_KEY, ServiceUrls


@pytest.mark.integration
@pytest.mark.parametrize(
    ("bad", "code", "says"),
    [
        (
            {"POLLINATOR_SECRET_KEY": None},
            2,
            "pollinator worker: invalid setting: POLLINATOR_SECRET_KEY is required but not set",
        ),
        (
            {"POLLINATOR_DATABASE_URL": "postgresql://pollinator@127.0.0.1:1/pollinator"},
            1,
            "pollinator worker: cannot start: ",
        ),
    ],
    ids=["no-secret-key", "unreachable-database"],
)
def test_a_worker_with_a_bad_setting_exits_at_start_saying_which(
    bad: dict[str, str | None], code: int, says: str, service_urls: ServiceUrls, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLINATOR_")}
    env |= {
        "POLLINATOR_DATABASE_URL": service_urls.database_url,
        "POLLINATOR_REDIS_URL": service_urls.redis_url,
        # No broker listens there: a worker that got past its start would retry connecting
        # (until the timeout below) and consume nothing of the other tests' queues.
        "POLLINATOR_BROKER_URL": "redis://127.0.0.1:1",
        "POLLINATOR_SECRET_KEY": SECRET_KEY,
        "POLLINATOR_DATA_DIR": str(tmp_path / "data"),
        "PYTHONPATH": str(ROOT),
    }
    for name, value in bad.items():  # None: not set at all
        if value is None:
            del env[name]
        else:
            env[name] = value
    try:
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", "worker", "--queues", "poll"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the worker kept running with {bad}: {exc.output!r}")
    output = done.stdout + done.stderr
    assert done.returncode == code, output
    assert says in output, output
    assert "Traceback" not in output, output
