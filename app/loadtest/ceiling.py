"""The ceiling: a bare asyncio + aiohttp loop fetching the pollers' pages as fast as it can.

Run as its own process (``python -m app.loadtest.ceiling SPEC.json``) so it has a core of
its own, like the poll worker had. It fetches the same page URLs the poller renders
(each account's resources, a recent ``since``, ``limit=1000&offset=0``) with each account's
own bearer token, round-robin, at a few concurrency levels (``levels``, ``seconds`` each),
reads every body, and prints ``{"levels": [...], "best_per_s": float}`` as JSON on stdout.
The best level is the ceiling: whichever of the simulator or this process saturates first.
There is no JSON decoding, no database and no bookkeeping: that is the point.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp


async def _level(
    targets: list[tuple[str, str]], concurrency: int, seconds: float
) -> dict[str, Any]:
    cycle = itertools.cycle(targets)
    ok = 0
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        deadline = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal ok, errors
            while time.monotonic() < deadline:
                url, token = next(cycle)
                try:
                    async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
                        await r.read()
                        if r.status < 300:
                            ok += 1
                        else:
                            errors += 1
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    return {
        "concurrency": concurrency,
        "requests": ok,
        "errors": errors,
        "seconds": round(elapsed, 3),
        "per_s": ok / elapsed if elapsed > 0 else 0.0,
    }


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    targets = [(str(u), str(t)) for u, t in spec["targets"]]
    seconds = float(spec.get("seconds", 5.0))
    results = []
    for level in spec.get("levels", [32, 128, 512]):
        results.append(await _level(targets, int(level), seconds))
    best = max((r["per_s"] for r in results), default=0.0)
    return {"levels": results, "best_per_s": best}


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    print(json.dumps(asyncio.run(run(spec))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
