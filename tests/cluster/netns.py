"""Hosts on one machine: a Linux network namespace per host, joined by a bridge.

Every namespace gets one veth pair into the bridge ``plnbr0`` on
``10.213.0.0/24`` (the test machine's own, private to it; nothing here routes
anywhere else: the namespaces have no default route). Killing a host kills
every process in its namespace; partitioning it takes its link down, so its TCP
connections stall exactly as a cut cable or a lost switch port would make them.
Needs root (``ip netns``); :func:`available` says whether it can run here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

SUBNET = "10.213.0"
BRIDGE = "plnbr0"
PREFIX = "pln-"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def available() -> str | None:
    """``None`` when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root (ip netns)"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    probe = f"{PREFIX}probe"
    done = _ip("netns", "add", probe, check=False)
    if done.returncode != 0:
        return f"cannot create a network namespace: {done.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@dataclass(frozen=True)
class Host:
    name: str
    ip: str

    @property
    def ns(self) -> str:
        return f"{PREFIX}{self.name}"

    @property
    def veth(self) -> str:
        return f"plv-{self.name}"[:15]


class Network:
    """The bridge and one namespace per host; :meth:`close` removes everything."""

    def __init__(self, hosts: Mapping[str, int]) -> None:
        self.hosts = {name: Host(name, f"{SUBNET}.{octet}") for name, octet in hosts.items()}
        self.gateway = f"{SUBNET}.1"

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def up(self) -> None:
        self.close()  # leftovers of a run that was killed
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        for host in self.hosts.values():
            _ip("netns", "add", host.ns)
            _ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.ns)
            _ip("link", "set", host.veth, "master", BRIDGE)
            _ip("link", "set", host.veth, "up")
            _ip("-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            _ip("-n", host.ns, "link", "set", "eth0", "up")
            _ip("-n", host.ns, "link", "set", "lo", "up")

    def spawn(
        self,
        host: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log: Path,
        user: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` on ``host`` (in its namespace), output appended to ``log``."""
        prefix = ["ip", "netns", "exec", self.hosts[host].ns]
        if user is not None:
            prefix += ["runuser", "-u", user, "--"]
        out: IO[bytes] = log.open("ab")
        try:
            return subprocess.Popen(
                [*prefix, *argv],
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            out.close()

    def pids(self, host: str) -> list[int]:
        done = _ip("netns", "pids", self.hosts[host].ns, check=False)
        return [int(p) for p in done.stdout.split()]

    def kill_host(self, host: str) -> int:
        """SIGKILL every process of ``host`` (a power cut); returns how many."""
        pids = self.pids(host)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def partition(self, host: str) -> None:
        _ip("link", "set", self.hosts[host].veth, "down")

    def heal(self, host: str) -> None:
        _ip("link", "set", self.hosts[host].veth, "up")

    def close(self) -> None:
        for host in self.hosts.values():
            if host.ns in _ip("netns", "list", check=False).stdout:
                self.kill_host(host.name)
                _ip("netns", "del", host.ns, check=False)
            _ip("link", "del", host.veth, check=False)
        _ip("link", "del", BRIDGE, check=False)
