"""The process helper and the readiness wait, on real child processes and real sockets."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from app.procs import (
    Check,
    NotReady,
    Process,
    http_ok,
    log_contains,
    stop_all,
    tcp_open,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _python(tmp_path: Path, name: str, code: str) -> Process:
    return Process.start(name, [PY, "-c", code], tmp_path / f"{name}.log", cwd=ROOT)


def test_a_child_logs_to_its_file_owner_only_and_reports_its_exit(tmp_path: Path) -> None:
    log = tmp_path / "hello.log"
    log.write_text("earlier run\n")
    log.chmod(0o644)
    proc = _python(tmp_path, "hello", "import sys; print('out'); print('err', file=sys.stderr)")
    assert proc.wait(30) == 0
    assert proc.returncode == 0
    assert not proc.alive()
    assert proc.log().splitlines()[0] == "earlier run"  # appended, not truncated
    assert {"out", "err"} <= set(proc.log().splitlines())
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    failing = _python(tmp_path, "failing", "print('boom'); raise SystemExit(3)")
    failing.wait(30)
    report = failing.exit_report()
    assert report.startswith("failing exited with 3")
    assert "boom" in report


def test_stop_ends_the_whole_group_including_grandchildren(tmp_path: Path) -> None:
    code = (
        "import subprocess, time\n"
        "child = subprocess.Popen(['sleep', '300'])\n"
        "print('grandchild', child.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    proc = _python(tmp_path, "parent", code)
    line = wait_until(
        lambda: next((x for x in proc.log().splitlines() if x.startswith("grandchild")), ""),
        30,
        watch=proc,
    )
    grandchild = int(line.split()[1])
    assert os.getpgid(grandchild) == proc.pid  # its own session: the group is the child's
    assert proc.stop(grace=10) == -signal.SIGTERM
    wait_until(lambda: _gone(grandchild), 30, what=f"grandchild {grandchild} to exit")


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(300)\n"
    )
    stubborn = _python(tmp_path, "stubborn", code)
    polite = _python(tmp_path, "polite", "import time; print('ready', flush=True); time.sleep(300)")
    for proc in (stubborn, polite):
        wait_until(log_contains(proc, "ready"), 30, watch=proc)
    started = time.monotonic()
    stop_all([stubborn, polite], grace=1.0)
    assert time.monotonic() - started >= 1.0
    assert stubborn.returncode == -signal.SIGKILL
    assert polite.returncode == -signal.SIGTERM


@pytest.mark.parametrize("die_with_parent", [True, False])
def test_children_get_sigterm_when_their_parent_is_killed(
    tmp_path: Path, die_with_parent: bool
) -> None:
    """PR_SET_PDEATHSIG: a SIGKILLed parent's child is stopped by the kernel.

    The ``False`` case is the control: without the signal the orphan lives on, so the
    ``True`` case shows the helper's doing, not a side effect of the test.
    """
    start = (
        f"Process.start('sleep', ['sleep', '300'], Path({str(tmp_path / 'sleep.log')!r}))"
        if die_with_parent
        else "Process('sleep', spawn(['sleep', '300'], die_with_parent=False), Path())"
    )
    code = (
        "import time\n"
        "from pathlib import Path\n"
        "from app.procs import Process, spawn\n"
        f"child = {start}\n"
        "print('child', child.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    parent = _python(tmp_path, "parent", code)
    line = wait_until(
        lambda: next((x for x in parent.log().splitlines() if x.startswith("child")), ""),
        60,
        watch=parent,
    )
    orphan = int(line.split()[1])
    try:
        parent.send_signal(signal.SIGKILL)  # the parent's group only: the child has its own
        parent.wait(30)
        if die_with_parent:
            wait_until(lambda: _gone(orphan), 30, what=f"orphan {orphan} to get SIGTERM")
        else:
            time.sleep(1.0)
            assert not _gone(orphan)
    finally:
        if not _gone(orphan):
            os.kill(orphan, signal.SIGKILL)


def test_wait_until_returns_the_first_truthy_value() -> None:
    answers = iter([0, None, "", "done"])
    assert wait_until(lambda: next(answers), 10, interval=0.01) == "done"


def test_wait_until_names_what_it_waited_for() -> None:
    with pytest.raises(NotReady, match=r"timed out after 0.2s waiting for the moon"):
        wait_until(Check(lambda: False, "the moon"), 0.2, interval=0.05)
    with pytest.raises(NotReady, match="waiting for the tide"):
        wait_until(lambda: False, 0.1, what="the tide", interval=0.05)


def test_wait_until_fails_at_once_when_the_watched_process_exits(tmp_path: Path) -> None:
    proc = _python(tmp_path, "crash", "print('cannot bind'); raise SystemExit(2)")
    started = time.monotonic()
    with pytest.raises(NotReady) as caught:
        wait_until(Check(lambda: False, "the API"), 120, watch=proc, interval=0.05)
    assert time.monotonic() - started < 60  # not the whole timeout
    message = str(caught.value)
    assert "the API" in message
    assert "crash exited with 2" in message
    assert "cannot bind" in message


def test_wait_until_stops_when_told() -> None:
    with pytest.raises(NotReady, match="stopped while waiting for x"):
        wait_until(lambda: False, 120, what="x", stopped=lambda: True)


@pytest.fixture
def http_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/ok" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_http_and_tcp_checks(http_server: str) -> None:
    assert http_ok(f"{http_server}/ok")()
    assert not http_ok(f"{http_server}/busy")()  # answers, but not 200
    port = int(http_server.rsplit(":", 1)[1])
    assert tcp_open("127.0.0.1", port)()
    closed = _closed_port()
    assert not tcp_open("127.0.0.1", closed)()
    assert not http_ok(f"http://127.0.0.1:{closed}/ok")()
    assert http_ok("http://x/ok").what == "HTTP 200 from http://x/ok"


def test_stop_of_an_exited_child_returns_its_status(tmp_path: Path) -> None:
    proc = _python(tmp_path, "quick", "raise SystemExit(5)")
    proc.wait(30)
    assert proc.stop() == 5
    slow = _python(tmp_path, "slow", "import time; time.sleep(30)")
    with pytest.raises(subprocess.TimeoutExpired):
        slow.wait(0.1)
    assert slow.stop() == -signal.SIGTERM
