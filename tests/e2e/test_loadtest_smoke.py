"""A small real ``pollinator loadtest``: every process, the OAuth flow, callbacks, the report.

Runs on the session's PostgreSQL server (the load test makes its own fresh database beside
the test database) and on the session's spare Redis database, because the load test
flushes it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.loadtest.report import RESULT_KEYS
from tests.conftest import ROOT, ServiceUrls

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(300)
def test_small_loadtest_delivers_every_change_once(
    service_urls: ServiceUrls, tmp_path: Path
) -> None:
    out = tmp_path / "lt"
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
            service_urls.spare_redis_url,
            "--out",
            str(out),
        ],  # fmt: skip
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    # A load test that does not stop after its 30 s is caught by the subprocess timeout,
    # not by a wall-clock bound that a loaded machine would break.
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
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
