"""The one-line progress display on stderr.

On a terminal the line is redrawn in place every couple of seconds (carriage return, no
curses); when stderr is a file or a pipe (CI logs) a full line is printed every ten seconds
instead, so logs stay readable.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO | None = None, interval: float | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval or (2.0 if self.tty else 10.0)
        self._task: asyncio.Task[None] | None = None
        self._line: Callable[[], str] = lambda: ""
        self._width = 0

    def start(self, line: Callable[[], str]) -> None:
        self._line = line
        self._task = asyncio.get_running_loop().create_task(self._run(), name="progress")

    def show(self) -> None:
        try:
            text = self._line()
        except Exception as exc:  # a display bug must never stop the run
            text = f"(progress unavailable: {exc})"
        if self.tty:
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad)
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def say(self, message: str) -> None:
        """A line of its own (a phase change), without garbling the progress line."""
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
        self.stream.write(message + "\n")
        self.stream.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.show()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.show()
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0
