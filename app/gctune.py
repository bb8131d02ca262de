"""Garbage-collector settings for Pollinator's long-running processes.

CPython's cyclic collector runs a young-generation pass every 700 net container
allocations, and a full pass (every tracked object: each imported module, function and
class, ~140,000 objects in the benchmark's process) every hundred young passes or so. The
poll path allocates containers all the time (aiohttp, asyncpg and redis-py objects, the
dicts of a page), nearly all freed by reference counting anyway. Timed with ``gc.callbacks``
in ``bench/bench_quiet_poll.py`` (3 rounds of 2,000 quiet polls and 2,000 bare GETs,
2026-12-07), the collector made 853 young, 77 middle and 7 full passes (117 ms each) and
took 17 % of the CPU (1.26 of 7.30 s). With the startup objects frozen and the young
threshold at 10,000: 24 young passes, 2 middle, no full one, 1 % of the CPU.

What this costs: cyclic garbage may live until 10,000 more containers were allocated. In a
worker that is a few MB at most (2-3 MB more RSS per worker at 1,000 instances, 3-9 MB less
at 30,000-40,000, in ``bench_scaling.py`` runs); in the API, whose requests build SQLAlchemy
sessions full of cycles, it was 9-10 MB for no CPU that matters (the API is not on the poll
path), so the API only freezes (:func:`freeze_startup`). Frozen objects are never collected,
which is why these are called once the process has started (what exists then lives as long
as the process), and never where tests build the app in-process.
"""

from __future__ import annotations

import gc
from typing import Final

#: Net container allocations between young-generation passes (CPython's default: 700).
YOUNG_THRESHOLD: Final = 10_000


def freeze_startup() -> None:
    """Move what exists now out of the collector's sight: every later full pass skips it.

    No collection first, though garbage frozen here is kept for good: a collection runs
    finalizers and weakref callbacks, and a SIGTERM whose handler raises ``SystemExit``
    (Celery's) inside one of those is printed and ignored. That left beat running after its
    supervisor was killed while beat started. A worker has ~50 unreachable objects here.
    """
    gc.freeze()


def tune_gc() -> None:
    """:func:`freeze_startup`, and collect the young generation less often (the processes
    on the poll and delivery path: workers, beat, the simulator)."""
    freeze_startup()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
