"""Garbage-collector settings for Pollinator's long-running processes.

CPython's cyclic collector runs a young-generation pass every 700 net container
allocations, and a full pass (every tracked object: each imported module, function and
class, ~140,000 objects in a worker) every hundred or so of those. A poll allocates a few
thousand short-lived containers (aiohttp, asyncpg and redis-py objects, dicts of a page),
almost all freed by reference counting, so at the defaults the collector ran ~850 young
and 7 full passes in 6,000 polls and took 17 % of the CPU (1.26 of 7.30 s, ``bench/
bench_quiet_poll.py`` with ``gc.callbacks`` timing it, 2026-12-07). With the young
threshold at 10,000 and the startup objects frozen it took 1 %.

What this costs: cyclic garbage may live until 10,000 more containers were allocated (a
few MB at most; the processes' peak RSS did not move in that measurement). Frozen objects
are never collected, which is why :func:`tune_gc` is called once the process has started
(what exists then lives as long as the process).
"""

from __future__ import annotations

import gc
from typing import Final

#: Net container allocations between young-generation passes (CPython's default: 700).
YOUNG_THRESHOLD: Final = 10_000


def tune_gc() -> None:
    """Freeze what exists now (it is never garbage again) and collect the young
    generation less often. Call once, when the process has finished starting."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
