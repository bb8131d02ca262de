"""Liveness heartbeat: a file whose modification time a healthy process keeps fresh.

A container orchestrator restarts a worker whose heartbeat file is older than a
minute (``find FILE -mmin -1``). The file is touched *by the work loop itself*
(the worker's asyncio loop, beat's tick), so the probe fails exactly when that
loop stops making progress — a wedged loop, a blocked thread — and costs one
``stat`` per probe instead of a broker round trip like ``celery inspect ping``.
Off unless ``POLLINATOR_HEARTBEAT_FILE`` is set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)

# Well inside the probes' one-minute window, and cheap: one utime() per interval.
HEARTBEAT_EVERY_S = 5.0


class Heartbeat:
    """Touches ``path`` at most once per ``every`` seconds when :meth:`beat` is called."""

    def __init__(self, path: Path, every: float | None = None) -> None:
        self.path = path
        self.every = HEARTBEAT_EVERY_S if every is None else every
        self._last = float("-inf")
        self._warned = False

    def beat(self) -> None:
        """Touch the file unless it was touched less than an interval ago; never raises."""
        if time.monotonic() - self._last >= self.every:
            self.touch()

    def touch(self) -> None:
        """Touch the file now; never raises."""
        self._last = time.monotonic()
        try:
            self.path.touch()
        except OSError as exc:
            # The probe will fail and restart the process; say why once, not every beat.
            if not self._warned:
                log.warning("cannot touch heartbeat file %s: %s", self.path, exc)
                self._warned = True
        else:
            self._warned = False

    async def run(self) -> None:
        """Beat forever on the running loop (cancel to stop)."""
        while True:
            self.touch()
            await asyncio.sleep(self.every)
