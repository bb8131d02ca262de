"""Child processes that cannot outlive their parent, readiness waits, and who holds a port.

Every process the project starts and supervises — the roles of ``pollinator up``, the
load test's stack, the end-to-end fixtures, the embedded Redis — is started here: in
its own session, so stopping it stops whatever it forked, and with Linux's parent-death
signal, so that when the parent dies *however* it dies — SIGKILL, the OOM killer, a
stop that outlasted its grace — the kernel sends SIGTERM to every child. Nothing is
left holding ports for the next ``make run``.

:class:`Process` is one such child with its output appended to a log file;
:func:`stop_all` stops several at once (SIGTERM to every group, one shared grace, then
SIGKILL). :func:`wait_until` is the one readiness wait: it polls a condition (an HTTP
200, an open TCP port, a line in a log, any callable) until a deadline, gives up early
when the process it watches exits, and says what it waited for when it times out.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1
STOP_GRACE_S = 10.0
# Logs may carry URLs with passwords and tokens: owner-only, like the data dir.
LOG_FILE_MODE = 0o600


def _parent_death_signal(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks the kernel for ``sig`` when the parent dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    parent = os.getpid()

    def arm() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os.kill(os.getpid(), sig)

    return arm


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdout: int | None = None,
    cwd: Path | None = None,
    die_with_parent: bool = True,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session; it gets SIGTERM when this process dies.

    The kernel ties the parent-death signal to the *thread* that forked: start children
    from a thread that lives as long as they should (the main thread), never from a
    short-lived worker thread.
    """
    return subprocess.Popen(
        list(argv),
        env=dict(env) if env is not None else None,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=stdout if stdout is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if stdout is not None else subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_parent_death_signal(signal.SIGTERM) if die_with_parent else None,
    )


def _signal_group(popen: subprocess.Popen[bytes], sig: int) -> None:
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, sig)


@dataclass
class Process:
    """One child in its own session, its stdout and stderr appended to ``log_path``."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(
        cls,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Process:
        """Start ``argv``; a log left by an earlier run is appended to, and made owner-only."""
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_FILE_MODE)
        try:
            os.fchmod(fd, LOG_FILE_MODE)
            popen = spawn(argv, env=env, stdout=fd, cwd=cwd)
        finally:
            os.close(fd)
        return cls(name, popen, log_path)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once it has exited (negative: killed by that signal), else None."""
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to its whole process group (nothing when it has exited)."""
        _signal_group(self.popen, sig)

    def wait(self, timeout: float | None = None) -> int:
        """Its exit status, waiting up to ``timeout`` (``subprocess.TimeoutExpired`` after)."""
        return self.popen.wait(timeout)

    def stop(self, grace: float = STOP_GRACE_S, sig: int = signal.SIGTERM) -> int:
        """``sig`` to the group, SIGKILL after ``grace`` seconds; returns the exit status."""
        stop_all([self], grace, sig)
        return self.popen.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def exit_report(self, tail: int = 2000) -> str:
        """``name exited with N; its log ends with: …`` (for errors about a dead child)."""
        ending = self.log()[-tail:]
        return f"{self.name} exited with {self.returncode}; its log ends with:\n{ending}"


def stop_all(
    processes: Iterable[Process], grace: float = STOP_GRACE_S, sig: int = signal.SIGTERM
) -> None:
    """Stop several children together: ``sig`` to every group, one shared grace, SIGKILL.

    All are signalled before any is waited for, so stopping N roles takes one grace,
    not N. A group is killed as a whole: a worker's pool children go with it.
    """
    procs = list(processes)
    for proc in procs:
        proc.send_signal(sig)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.popen.wait()


class NotReady(TimeoutError):
    """A readiness wait ran out of time, or the process it watched exited first."""


@dataclass(frozen=True)
class Check:
    """A readiness condition and the words for it in a timeout error."""

    test: Callable[[], bool]
    what: str

    def __call__(self) -> bool:
        return self.test()


def http_ok(url: str) -> Check:
    """``url`` answers 200."""

    def test() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    return Check(test, f"HTTP 200 from {url}")


def tcp_open(host: str, port: int) -> Check:
    """Something accepts connections on ``host:port``."""

    def test() -> bool:
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            return False

    return Check(test, f"a listener on {host}:{port}")


def log_contains(proc: Process, text: str) -> Check:
    """``text`` appears in the log of ``proc``."""
    return Check(lambda: text in proc.log(), f"{text!r} in {proc.log_path}")


def wait_until(
    condition: Callable[[], T],
    timeout: float,
    *,
    what: str = "",
    interval: float = 0.25,
    watch: Process | None = None,
    stopped: Callable[[], bool] | None = None,
) -> T:
    """Poll ``condition`` until it returns something truthy, and return that.

    Raises :class:`NotReady` naming ``what`` (by default the :class:`Check`'s own words)
    after ``timeout`` seconds, or at once with its exit status and log tail when
    ``watch`` exits first: a crashed child never costs the whole timeout. ``stopped``
    ends the wait early (``NotReady`` too), for a supervisor told to stop while waiting.
    """
    label = what or getattr(condition, "what", "") or getattr(condition, "__qualname__", "?")
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if watch is not None and not watch.alive():
            raise NotReady(f"waiting for {label}: {watch.exit_report()}")
        if stopped is not None and stopped():
            raise NotReady(f"stopped while waiting for {label}")
        if time.monotonic() > deadline:
            raise NotReady(f"timed out after {timeout:g}s waiting for {label}")
        time.sleep(interval)


def port_free(host: str, port: int) -> bool:
    """Whether a listening socket could be bound on ``host:port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_holder(port: int) -> str:
    """Who listens on ``port``: ``PID 123 (python3 -m http.server)``, or a vaguer answer."""
    import psutil

    try:
        connections = psutil.net_connections(kind="inet")
    except (psutil.AccessDenied, OSError):
        return "another process (run as its owner or root to see which)"
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if conn.pid is None:
                return "another process (not visible to this user)"
            try:
                command = " ".join(psutil.Process(conn.pid).cmdline())[:120]
            except psutil.Error:
                command = "?"
            return f"PID {conn.pid} ({command})"
    return "another process"
