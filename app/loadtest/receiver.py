"""The load test's callback receiver, run as its own process (``python -m app.loadtest.receiver``).

It must not distort what it measures, so it does as little as possible per request:
take the receive time first, answer 200, and append one compact JSON line
``{"t": epoch, "path", "wid": webhook-id, "status", "ev": [[eventId, objectType, objectId,
eventType, date], ...]}`` to a buffer that is written out a few times a second (the load test
tails the file). Keeping the raw records out of the log keeps the file small at thousands of
events per second. ``GET /_lt/stats`` answers ``{"requests", "events"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import IO, Any

from aiohttp import web

FLUSH_INTERVAL_S = 0.25


class Receiver:
    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.buffer: list[str] = []
        self.requests = 0
        self.events = 0

    async def receive(self, request: web.Request) -> web.StreamResponse:
        received = time.time()
        raw = await request.read()
        events: list[list[Any]] = []
        try:
            message = json.loads(raw)["message"]
            for e in message.get("events", []):
                events.append(
                    [e.get("eventId"), e.get("objectType"), e.get("objectId"), e.get("eventType"),
                     e.get("date")]
                )  # fmt: skip
        except (ValueError, KeyError, TypeError, AttributeError):
            events = []
        self.requests += 1
        self.events += len(events)
        line = {
            "t": round(received, 4),
            "path": request.path,
            "wid": request.headers.get("webhook-id", ""),
            "status": 200,
            "ev": events,
        }
        self.buffer.append(json.dumps(line, separators=(",", ":")))
        return web.Response(status=200, text="ok")

    async def stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"requests": self.requests, "events": self.events})

    def flush(self) -> None:
        if self.buffer:
            self.out.write("\n".join(self.buffer) + "\n")
            self.out.flush()
            self.buffer.clear()

    async def flusher(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            self.flush()


async def serve(host: str, port: int, out_path: Path) -> None:
    with out_path.open("a", encoding="utf-8") as out:
        receiver = Receiver(out)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/_lt/stats", receiver.stats)
        app.router.add_route("POST", "/{tail:.*}", receiver.receive)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        await web.TCPSite(runner, host, port, backlog=1024).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        flusher = asyncio.create_task(receiver.flusher())
        print(f"load-test receiver listening on http://{host}:{port}", flush=True)
        try:
            await stop.wait()
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            await runner.cleanup()
            receiver.flush()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.loadtest.receiver")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
