"""Child processes that cannot outlive their parent, and who holds a port.

Every role ``pollinator up`` (and the embedded Redis) runs is started here: in its
own session, so stopping it stops whatever it forked, and with Linux's parent-death
signal, so that when the supervisor dies *however* it dies — SIGKILL, the OOM
killer, a stop that outlasted its grace — the kernel sends SIGTERM to every child.
Nothing is left holding ports for the next ``make run``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence

_PR_SET_PDEATHSIG = 1


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
    die_with_parent: bool = True,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session; it gets SIGTERM when this process dies."""
    return subprocess.Popen(
        list(argv),
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=stdout if stdout is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if stdout is not None else subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_parent_death_signal(signal.SIGTERM) if die_with_parent else None,
    )


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
