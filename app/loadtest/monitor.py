"""What the load test watches while it runs: the poll journal, the receiver's log, CPU/RSS.

All three are read incrementally (stream ids, file offsets) so a progress tick costs the
same at minute one and minute ten.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

from app.loadtest.analysis import (
    JournalEntry,
    ReceivedEvent,
    parse_iso,
    parse_journal_entry,
)
from app.metrics import POLL_JOURNAL

JOURNAL_BATCH = 10_000


class JournalReader:
    """Tails ``pollinator:journal:polls``."""

    def __init__(self, redis_url: str) -> None:
        self.client = redis.Redis.from_url(redis_url, decode_responses=True)
        self.last_id = "-"
        self.entries: list[JournalEntry] = []

    def poll(self) -> int:
        """Read what was appended since the last call; returns how many entries."""
        added = 0
        while True:
            start = self.last_id if self.last_id == "-" else f"({self.last_id}"
            batch: list[tuple[str, dict[str, str]]] = self.client.xrange(  # type: ignore[assignment]
                POLL_JOURNAL, min=start, max="+", count=JOURNAL_BATCH
            )
            if not batch:
                return added
            for entry_id, fields in batch:
                with contextlib.suppress(KeyError, ValueError):
                    self.entries.append(parse_journal_entry(fields))
                    added += 1
                self.last_id = entry_id
            if len(batch) < JOURNAL_BATCH:
                return added

    def close(self) -> None:
        self.client.close()


class ReceiverTail:
    """Tails the receiver's JSON-lines log into :class:`ReceivedEvent` rows."""

    def __init__(self, path: Path, account_of_path: Callable[[str], str | None]) -> None:
        self.path = path
        self.account_of_path = account_of_path
        self.offset = 0
        self.requests = 0
        self.events: list[ReceivedEvent] = []

    def poll(self) -> int:
        if not self.path.exists():
            return 0
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n")
        if end < 0:
            return 0
        self.offset += end + 1
        added = 0
        for raw in data[: end + 1].splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            account = self.account_of_path(str(line.get("path", "")))
            if account is None:
                continue
            self.requests += 1
            for ev in line.get("ev", []):
                event_id, resource, object_id, event_type, date = ev
                self.events.append(
                    ReceivedEvent(
                        account=account,
                        resource=str(resource),
                        object_id=str(object_id),
                        event_type=str(event_type),
                        event_id=str(event_id),
                        date=_date(date),
                        received=float(line["t"]),
                        status=int(line.get("status", 200)),
                        webhook_id=str(line.get("wid", "")),
                    )
                )
                added += 1
        return added


def _date(value: Any) -> float | None:
    if not value:
        return None
    try:
        return parse_iso(str(value))
    except ValueError:
        return None


@dataclass
class ProcessSample:
    t: float
    cpu: dict[str, float]  # percent of one core, per role
    rss_mb: dict[str, float]


@dataclass
class Sampler:
    """Samples CPU and RSS of named process trees once a second, in a thread.

    ``roles`` maps a name to a callable giving the root pid (or ``None`` when gone); a
    root's children are included (pgserver's postmaster, forked helpers).
    """

    roles: dict[str, Callable[[], int | None]]
    interval: float = 1.0
    samples: list[ProcessSample] = field(default_factory=list)
    _procs: dict[int, psutil.Process] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="loadtest-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _proc(self, pid: int) -> psutil.Process:
        proc = self._procs.get(pid)
        if proc is None:
            proc = psutil.Process(pid)
            proc.cpu_percent(None)  # prime: the first reading is always 0
            self._procs[pid] = proc
        return proc

    def _tree(self, root: int) -> list[psutil.Process]:
        try:
            top = self._proc(root)
            pids = [root] + [c.pid for c in top.children(recursive=True)]
        except psutil.Error:
            return []
        found: list[psutil.Process] = []
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                found.append(self._proc(pid))
        return found

    def sample(self) -> ProcessSample:
        cpu: dict[str, float] = {}
        rss: dict[str, float] = {}
        for name, root_of in self.roles.items():
            root = root_of()
            if root is None:
                continue
            total_cpu = 0.0
            total_rss = 0.0
            for proc in self._tree(root):
                with contextlib.suppress(psutil.Error):
                    total_cpu += proc.cpu_percent(None)
                    total_rss += proc.memory_info().rss / 1e6
            cpu[name] = total_cpu
            rss[name] = total_rss
        return ProcessSample(time.time(), cpu, rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):
                self.samples.append(self.sample())


def find_embedded_postgres(pgdata: Path) -> int | None:
    """The postmaster serving ``pgdata`` (its children are the backends)."""
    wanted = str(pgdata)
    for proc in psutil.process_iter(["pid", "cmdline", "ppid"]):
        cmdline = proc.info.get("cmdline") or []
        if any(part == wanted for part in cmdline) and "postgres" in " ".join(cmdline[:1]):
            return int(proc.info["pid"])
    return None


def find_redis(redis_url: str) -> int | None:
    """A local ``redis-server`` listening on the URL's port, if any."""
    port = redis_url.rsplit(":", 1)[-1].split("/", 1)[0]
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if "redis-server" in (proc.info.get("name") or "") + cmdline and f":{port}" in cmdline:
            return int(proc.info["pid"])
    return None
