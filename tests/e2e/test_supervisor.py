"""``pollinator up`` as a new user meets it: killed hard, started beside a busy port, run twice.

Each test runs the real command (embedded PostgreSQL and Redis in a data dir of its
own, free API and Flower ports) and reads only what a user sees: its output, its exit
code, and which processes are left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from app.embedded import free_port
from tests.conftest import ROOT
from tests.e2e.conftest import http_json, wait_for

pytestmark = pytest.mark.e2e
UP_TIMEOUT_S = 180.0


class Up:
    """One ``pollinator up`` process and everything it printed."""

    def __init__(self, data_dir: Path, *args: str, api_port: int | None = None) -> None:
        self.api_port = api_port or free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("POLLINATOR_") or k == "POLLINATOR_TEST_BROWSER"
        }
        env.update(
            POLLINATOR_DATA_DIR=str(data_dir),
            POLLINATOR_API_PORT=str(self.api_port),
            POLLINATOR_FLOWER_PORT=str(free_port()),
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "up", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_up(self) -> None:
        wait_for(
            lambda: "Press Ctrl-C to stop." in self.output or self.proc.poll() is not None,
            UP_TIMEOUT_S,
            what="pollinator up to start",
        )
        assert self.proc.poll() is None, self.output

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(60)
        self.close()
        return code

    def close(self) -> None:
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"
    # An embedded PostgreSQL outlives `up` by design (pgserver reuses it); stop it here.
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.info["name"] == "postgres" and str(tmp_path) in cmdline:
            proc.terminate()


def _gone(pids: list[int]) -> bool:
    return not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]


def test_children_die_with_a_killed_supervisor_and_the_next_up_starts(data_dir: Path) -> None:
    first = Up(data_dir, "--no-demo")
    first.wait_up()
    children = [p.pid for p in first.children()]
    assert len(children) >= 5  # api, beat, two workers, flower (+ embedded Redis)
    first.stop(signal.SIGKILL)  # the OOM killer, or a stop that outlasted its grace
    wait_for(lambda: _gone(children), 60, what=f"orphans of a killed `up` to exit: {children}")

    second = Up(data_dir, "--no-demo", api_port=first.api_port)  # same ports, same data dir
    second.wait_up()
    assert "Pollinator is up." in second.output
    assert http_json("GET", f"http://127.0.0.1:{second.api_port}/readyz")[0] == 200
    children = [p.pid for p in second.children()]
    assert second.stop(signal.SIGHUP) == 0  # the terminal closed: a clean stop
    wait_for(lambda: _gone(children), 30, what="children after SIGHUP")


def test_a_taken_api_port_is_refused_with_its_holder_named(data_dir: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        up = Up(data_dir, "--no-demo", api_port=port)
        code = up.proc.wait(UP_TIMEOUT_S)
        up.close()
    assert code != 0
    assert "Pollinator is up" not in up.output
    line = next(x for x in up.lines if f"port {port}" in x)
    assert "POLLINATOR_API_PORT" in line
    assert f"PID {os.getpid()}" in line


@pytest.mark.timeout(UP_TIMEOUT_S + 200)
def test_the_demo_moves_off_taken_ports_and_says_where(data_dir: Path) -> None:
    held: list[socket.socket] = []
    try:
        for port in (8090, 8091):  # the demo's usual ports, taken (or already busy)
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
                sock.listen()
                held.append(sock)
            except OSError:
                sock.close()
        up = Up(data_dir, "--demo")
        up.wait_up()
        sim = re.search(r"simulator\s+http://127\.0\.0\.1:(\d+)", up.output)
        sink = re.search(r"sink\s+http://127\.0\.0\.1:(\d+)", up.output)
        assert sim is not None, up.output
        assert sink is not None, up.output
        assert {int(sim.group(1)), int(sink.group(1))}.isdisjoint({8090, 8091})
        assert "Demo setup failed" not in up.output
        # Healthy, and the demo works end to end: the API is ready, and the demo
        # instance's events (polled from the simulator) arrive at the sink, signed.
        api = f"http://127.0.0.1:{up.api_port}"
        assert http_json("GET", f"{api}/readyz")[0] == 200
        sink_url = f"http://127.0.0.1:{sink.group(1)}/_sink/requests"

        def demo_callbacks() -> list[dict[str, Any]]:
            status, data = http_json("GET", sink_url)
            assert status == 200
            requests = data if isinstance(data, list) else data.get("requests", [])
            return [r for r in requests if r["method"] == "POST" and r.get("status") == 200]

        [first, *_] = wait_for(demo_callbacks, 120, what="the demo's first callback")
        message = json.loads(first["body"])["message"]
        assert message["events"]
        assert first["headers"]["webhook-id"] == message["eventId"]
        assert http_json("GET", f"{api}/healthz")[0] == 200
        assert up.stop() == 0
    finally:
        for sock in held:
            sock.close()
