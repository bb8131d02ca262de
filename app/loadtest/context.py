"""What every phase of a load test shares: the options, the instances, what was measured.

The phases (:mod:`.setup`, :mod:`.drive`, :mod:`.capacity`, :mod:`.results`) are functions
of one :class:`Context`; :class:`app.loadtest.run.LoadTest` calls them in order.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from app.client import Pollinator, Simulator
from app.domain.pollconfig import DEFAULT_POLLER_CONFIGURATION
from app.loadtest.analysis import Change
from app.loadtest.monitor import JournalReader, ReceiverTail, Sampler
from app.loadtest.progress import Progress
from app.loadtest.stack import Stack

T = TypeVar("T")


class LoadTestError(RuntimeError):
    """The run could not go on; the message says why."""


@dataclass
class Options:
    instances: int
    refresh_minutes: float
    duration: float
    resources: list[str]
    changes_per_second: float
    provider_latency_ms: float
    out: Path
    api_url: str | None = None
    sim_url: str | None = None
    auth: str | None = None
    database_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = Path(".data/loadtest")
    instances_per_app: int = 100
    create_concurrency: int = 50
    poll_workers: int = 1
    delivery_workers: int = 1
    faults: bool = False
    fault_rate: float = 0.05
    provider_timeout_s: float | None = None
    drain_timeout_s: float | None = None
    burst_timeout_s: float | None = None
    ceiling_seconds: float = 15.0
    records_per_account: int = 10
    env: dict[str, str] = field(default_factory=dict)
    keep_database: bool = False
    progress_interval: float | None = None

    @property
    def managed(self) -> bool:
        """Whether this run starts (and owns) the stack."""
        return self.api_url is None


@dataclass
class Instance:
    index: int
    account: str
    client_id: str
    client_secret: str
    instance_id: int = 0


@dataclass
class RunState:
    """Everything measured so far; the progress line reads it."""

    phase: str = "starting"
    created: int = 0
    t_start: float = 0.0  # the changes started
    t_end: float = 0.0  # the changes stopped
    journal: JournalReader | None = None
    receiver: ReceiverTail | None = None
    live_missed: int | None = None


@dataclass
class Context:
    """One run: its options, stack, clients and results so far."""

    opts: Options
    state: RunState = field(default_factory=RunState)
    stack: Stack | None = None
    sampler: Sampler | None = None
    instances: list[Instance] = field(default_factory=list)
    by_account: dict[str, Instance] = field(default_factory=dict)
    sim_url: str = ""
    api_url: str = ""
    auth: str = ""
    # Set while the phases run (one aiohttp session for the whole run).
    sim: Simulator | None = None
    api: Pollinator | None = None
    changes: list[Change] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)  # named moments on the plot
    extra: dict[str, Any] = field(default_factory=dict)  # results beyond the phases' returns
    progress: Progress | None = None

    def __post_init__(self) -> None:
        self.sim_url = self.opts.sim_url or ""
        self.api_url = self.opts.api_url or ""
        self.auth = self.opts.auth or ""

    def set_phase(self, phase: str) -> None:
        self.state.phase = phase
        message = f"loadtest: {phase}"
        if self.progress is not None:
            self.progress.say(message)
        else:
            print(message, file=sys.stderr, flush=True)

    @property
    def simulator(self) -> Simulator:
        assert self.sim is not None
        return self.sim

    @property
    def pollinator(self) -> Pollinator:
        assert self.api is not None
        return self.api

    @property
    def receiver_url(self) -> str:
        assert self.stack is not None
        return self.stack.receiver_url

    def account_of_path(self, path: str) -> str | None:
        account = path.rsplit("/", 1)[-1]
        return account if account in self.by_account else None

    def poller_configuration(self) -> dict[str, Any]:
        return {r: DEFAULT_POLLER_CONFIGURATION[r] for r in self.opts.resources}

    def tick(self) -> None:
        """Read what the journal and the receiver added; check no child died."""
        if self.state.journal is not None:
            self.state.journal.poll()
        if self.state.receiver is not None:
            self.state.receiver.poll()
        if self.stack is not None and (dead := self.stack.died()):
            tail = dead[0].log()[-1500:]
            raise LoadTestError(f"{dead[0].name} exited during the run; its log ends with:\n{tail}")


async def bounded(items: list[T], concurrency: int, work: Callable[[T], Awaitable[None]]) -> None:
    """``work`` on every item, at most ``concurrency`` at a time."""
    queue: asyncio.Queue[T] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def worker() -> None:
        while not queue.empty():
            await work(queue.get_nowait())

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(items))))))
