"""Background random creates/updates across accounts (admin ``POST /_sim/mutator``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from app.simulator.dates import now_ms
from app.simulator.store import Store

__all__ = ["Mutator", "MutatorSettings"]

log = logging.getLogger(__name__)
TICK_SECONDS = 0.02


@dataclass(slots=True)
class MutatorSettings:
    changes_per_second: float = 0.0
    resources: list[str] = field(default_factory=lambda: ["contacts"])
    create_ratio: float = 0.3
    accounts: list[str] | None = None  # None: every account (including ones created later)


class Mutator:
    """Applies ``changes_per_second`` random changes, spread evenly over time."""

    def __init__(self, store: Store, rng: random.Random | None = None) -> None:
        self.store = store
        self.rng = rng or random.Random()
        self.settings = MutatorSettings()
        self.applied = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def configure(self, settings: MutatorSettings) -> None:
        """Start, re-configure or (rate 0) stop the mutator. Must run on the event loop."""
        self.settings = settings
        if settings.changes_per_second <= 0:
            if self._task is not None:
                self._task.cancel()
                self._task = None
            return
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sim-mutator")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def step(self, n: int) -> int:
        """Apply ``n`` random changes now; returns how many were applied."""
        s = self.settings
        names: Sequence[str] = s.accounts if s.accounts is not None else self.store.account_names
        if not names or not s.resources:
            return 0
        done = 0
        for _ in range(n):
            account = self.rng.choice(names)
            resource = self.rng.choice(s.resources)
            table = self.store.account(account).table(resource)
            now = now_ms()
            if len(table) == 0 or self.rng.random() < s.create_ratio:
                self.store.create(account, resource, now)
            else:
                rid = table.ids[self.rng.randrange(len(table))]
                self.store.update(account, resource, rid, now)
            done += 1
        self.applied += done
        return done

    async def _run(self) -> None:
        owed = 0.0
        last = time.monotonic()
        try:
            while True:
                await asyncio.sleep(TICK_SECONDS)
                now = time.monotonic()
                owed += (now - last) * self.settings.changes_per_second
                last = now
                due = int(owed)
                if due:
                    owed -= due
                    self.step(due)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not die silently
            log.exception("mutator crashed")
