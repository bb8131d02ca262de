"""A small real ``pollinator loadtest``: every process, the OAuth flow, callbacks, the report.

Runs on the session's PostgreSQL server (the load test makes its own fresh database beside
the test database) and on a Redis database of its own, because the load test flushes it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.loadtest.report import RESULT_KEYS
from tests.conftest import ROOT, ServiceUrls

pytestmark = pytest.mark.e2e

LOADTEST_REDIS_DB = 13


def _redis_db(url: str, db: int) -> str:
    head, _, tail = url.rpartition("/")
    return f"{head}/{db}" if tail.isdigit() else f"{url.rstrip('/')}/{db}"


@pytest.mark.timeout(150)
def test_small_loadtest_delivers_every_change_once(
    service_urls: ServiceUrls, tmp_path: Path
) -> None:
    out = tmp_path / "lt"
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "loadtest",
            "--instances",
            "20",
            "--refresh-minutes",
            "0.05",
            "--duration",
            "30",
            "--changes-per-second",
            "4",
            "--ceiling-seconds",
            "4",
            "--database-url",
            service_urls.database_url,
            "--redis-url",
            _redis_db(service_urls.redis_url, LOADTEST_REDIS_DB),
            "--out",
            str(out),
        ],  # fmt: skip
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert elapsed < 90, f"the smoke load test took {elapsed:.0f}s"
    results = json.loads((out / "results.json").read_text())
    assert set(RESULT_KEYS) <= set(results)
    assert results["instances"] == 20
    assert results["changes"] > 0
    assert results["missed"] == 0, results["delivery"]["missed_examples"]
    assert results["duplicates"] == 0
    assert results["events_delivered"] > 0
    assert results["polls"] > 0
    assert results["capacity_polls_per_s"] > 0
    assert results["raw_fetch_per_s"] > 0
    assert results["schedule_lag_p99_s"] is not None
    assert (out / "latency.png").stat().st_size > 10_000
    assert "missed" in proc.stdout  # the table
