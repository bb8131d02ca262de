"""``pollinator simulate`` / ``pollinator sink`` as real processes: startup line, SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest


def _start(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on " not in line:
        proc.kill()
        pytest.fail(f"no startup line: {line!r} {proc.communicate()[1]}")
    return proc, line.rsplit(" ", 1)[1].strip()


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr


def test_simulate_cli_serves_and_stops_on_sigterm() -> None:
    proc, url = _start(["simulate", "--port", "0", "--accounts", "3", "--records-per-account", "5"])
    try:
        with urllib.request.urlopen(f"{url}/_sim/accounts", timeout=5) as resp:
            accounts = json.load(resp)
        assert [a["account"] for a in accounts] == ["acct-1", "acct-2", "acct-3"]
        assert sum(accounts[0]["records"].values()) == 5
    finally:
        _stop(proc)


def test_sink_cli_records_to_file(tmp_path: Path) -> None:
    out = tmp_path / "sink.jsonl"
    proc, url = _start(
        ["sink", "--port", "0", "--out", str(out), "--status", "500", "--count", "1"]
    )
    try:
        req = urllib.request.Request(f"{url}/hook", data=b'{"a":1}', method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code == 500
        err.value.close()
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200
    finally:
        _stop(proc)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["path"], r["body"], r["status"]) for r in lines] == [
        ("/hook", '{"a":1}', 500),
        ("/hook", '{"a":1}', 200),
    ]
