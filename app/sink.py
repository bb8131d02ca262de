"""``pollinator sink``: a callback receiver that records every request.

Each request (method, path, query, headers, raw body, received_at) becomes one JSON line appended
to ``--out`` (flushed per line) and is kept in memory for ``GET /_sink/requests``. The answer is
200 unless a behaviour says otherwise: the next N requests, or a fraction of them, get another
status (optionally after a delay), which is how tests exercise delivery retries.

Admin (not recorded): ``POST /_sink/behaviour`` ``{"status": 500, "count": N}`` |
``{"status": 500, "fraction": 0.3}`` | ``{"status": 200}`` (reset), optional ``"delaySeconds"``
and ``"retryAfter"``; ``GET /_sink/behaviour``; ``GET /_sink/requests[?after=SEQ]``;
``DELETE /_sink/requests``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import random
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from aiohttp import web

from app.domain.isodate import format_ms

__all__ = ["SINK", "Behaviour", "Sink", "create_sink_app", "main"]

log = logging.getLogger("app.sink")


@dataclass
class Behaviour:
    """How to answer: ``status`` for the next ``count`` requests, or for a ``fraction`` of them.

    With neither ``count`` nor ``fraction``, ``status`` applies to every request.
    """

    status: int = 200
    count: int | None = None
    fraction: float | None = None
    delay_seconds: float = 0.0
    retry_after: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "count": self.count,
            "fraction": self.fraction,
            "delaySeconds": self.delay_seconds,
            "retryAfter": self.retry_after,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Behaviour:
        status = data.get("status", 200)
        if not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError("status must be an HTTP status code")
        count = data.get("count")
        if count is not None and (not isinstance(count, int) or count < 0):
            raise ValueError("count must be a non-negative integer")
        fraction = data.get("fraction")
        if fraction is not None and (
            not isinstance(fraction, int | float) or not 0.0 <= fraction <= 1.0
        ):
            raise ValueError("fraction must be a number in [0, 1]")
        delay = data.get("delaySeconds", 0.0)
        if not isinstance(delay, int | float) or delay < 0:
            raise ValueError("delaySeconds must be a non-negative number")
        retry_after = data.get("retryAfter")
        if retry_after is not None and (not isinstance(retry_after, int) or retry_after < 0):
            raise ValueError("retryAfter must be a non-negative integer")
        return cls(
            status,
            count,
            None if fraction is None else float(fraction),
            float(delay),
            retry_after,
        )


class Sink:
    """Recorded requests and the current behaviour."""

    def __init__(
        self,
        out: Path | None = None,
        behaviour: Behaviour | None = None,
        keep: int = 100_000,
        seed: int | None = None,
    ) -> None:
        self.behaviour = behaviour or Behaviour()
        self.requests: deque[dict[str, Any]] = deque(maxlen=keep)
        self.seq = 0
        self.rng = random.Random(seed)
        self.stopping = asyncio.Event()
        self._out: IO[str] | None = None
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            self._out = out.open("a", encoding="utf-8")

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def decide(self) -> tuple[int, float, int | None]:
        """``(status, delay, retry_after)`` for the next request, consuming ``count``."""
        b = self.behaviour
        if b.status == 200 and b.delay_seconds == 0:
            return 200, 0.0, None
        if b.count is not None:
            if b.count <= 0:
                return 200, 0.0, None
            b.count -= 1
            return b.status, b.delay_seconds, b.retry_after
        if b.fraction is not None and self.rng.random() >= b.fraction:
            return 200, 0.0, None
        return b.status, b.delay_seconds, b.retry_after

    def record(self, entry: dict[str, Any]) -> None:
        self.requests.append(entry)
        if self._out is not None:
            self._out.write(json.dumps(entry, separators=(",", ":")) + "\n")
            self._out.flush()

    # --- handlers ------------------------------------------------------------------------------

    async def receive(self, request: web.Request) -> web.StreamResponse:
        received = time.time()
        raw = await request.read()
        status, delay, retry_after = self.decide()
        self.seq += 1
        headers: dict[str, str] = {}
        for key, value in request.headers.items():
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        entry: dict[str, Any] = {
            "seq": self.seq,
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "headers": headers,
            "body": None,
            "received_at": _iso_ms_z(received),
            "status": status,
        }
        try:
            entry["body"] = raw.decode("utf-8")
        except UnicodeDecodeError:
            entry["body_base64"] = base64.b64encode(raw).decode("ascii")
        self.record(entry)
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
        reply_headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return web.json_response(
            {"received": self.seq, "status": status}, status=status, headers=reply_headers
        )

    async def set_behaviour(self, request: web.Request) -> web.StreamResponse:
        try:
            data = await request.json()
            if not isinstance(data, dict):
                raise ValueError("body must be a JSON object")
            self.behaviour = Behaviour.from_json(data)
        except ValueError as e:  # JSONDecodeError is a ValueError
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response(self.behaviour.to_json())

    async def get_behaviour(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.behaviour.to_json())

    async def list_requests(self, request: web.Request) -> web.StreamResponse:
        try:
            after = int(request.query.get("after", "0"))
        except ValueError:
            return web.json_response({"error": "after must be an integer"}, status=400)
        return web.json_response([r for r in self.requests if r["seq"] > after])

    async def clear_requests(self, request: web.Request) -> web.StreamResponse:
        self.requests.clear()
        return web.json_response({"cleared": True})

    async def on_shutdown(self, app: web.Application) -> None:
        self.stopping.set()

    async def on_cleanup(self, app: web.Application) -> None:
        self.close()


def _iso_ms_z(ts: float) -> str:
    return format_ms(datetime.fromtimestamp(ts, UTC))


SINK: web.AppKey[Sink] = web.AppKey("sink", Sink)


def create_sink_app(
    out: Path | None = None,
    behaviour: Behaviour | None = None,
    keep: int = 100_000,
    seed: int | None = None,
) -> web.Application:
    """Build the sink application; ``app[SINK]`` gives access to its state."""
    sink = Sink(out, behaviour, keep, seed)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[SINK] = sink
    app.on_shutdown.append(sink.on_shutdown)
    app.on_cleanup.append(sink.on_cleanup)
    app.router.add_post("/_sink/behaviour", sink.set_behaviour)
    app.router.add_get("/_sink/behaviour", sink.get_behaviour)
    app.router.add_get("/_sink/requests", sink.list_requests)
    app.router.add_delete("/_sink/requests", sink.clear_requests)
    app.router.add_route("*", "/{tail:.*}", sink.receive)
    return app


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pollinator sink", description="record callback requests")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8091, help="0 picks a free port")
    p.add_argument("--out", type=Path, default=None, help="append one JSON line per request")
    p.add_argument("--status", type=int, default=200, help="answer this status ...")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--count", type=int, default=None, help="... for the next N requests")
    group.add_argument("--fraction", type=float, default=None, help="... for a fraction of them")
    p.add_argument("--delay-seconds", type=float, default=0.0, help="hang before answering")
    p.add_argument("--keep", type=int, default=100_000, help="requests kept in memory")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--log-level", default="INFO")
    return p


async def _serve(args: argparse.Namespace, behaviour: Behaviour) -> None:
    app = create_sink_app(args.out, behaviour, args.keep, args.seed)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    port = runner.addresses[0][1] if runner.addresses else args.port
    print(f"Callback sink listening on http://{args.host}:{port}", flush=True)  # noqa: T201
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()


def main(argv: list[str]) -> int:
    """Entry point of ``pollinator sink``."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        behaviour = Behaviour.from_json(
            {
                "status": args.status,
                "count": args.count,
                "fraction": args.fraction,
                "delaySeconds": args.delay_seconds,
            }
        )
    except ValueError as e:
        log.error("pollinator sink: %s", e)
        return 2
    try:
        asyncio.run(_serve(args, behaviour))
    except OSError as e:
        log.error("cannot listen on %s:%s: %s", args.host, args.port, e)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
