"""``pollinator worker --queues poll|delivery``: a Celery worker on its own asyncio runtime."""

from __future__ import annotations

import argparse
import logging
import math
import os
import socket

from celery.signals import worker_init, worker_ready, worker_shutdown

from app.settings import SettingsError
from workers.queues import TASK_BATCH, Queue

log = logging.getLogger(__name__)


@worker_init.connect
def _open_runtime(**_: object) -> None:
    """Open the runtime (its database pool, clients and secret box) before the worker
    consumes: a setting they cannot work with stops the worker here, with one line
    saying which, instead of failing its first task and every one after it.

    Celery logs and swallows an ``Exception`` raised by a signal handler, so the failure
    leaves as ``SystemExit``: 2 for an invalid setting (as every entry point), 1 when a
    service the settings name cannot be used. The pool is Celery's thread pool (see
    :func:`main`): the runtime opened in this process is the one the tasks run on.
    """
    from workers.runtime import get_runtime

    try:
        get_runtime()
    except SettingsError as exc:
        log.critical("pollinator worker: invalid setting: %s", exc)
        raise SystemExit(2) from None
    except Exception as exc:
        log.critical("pollinator worker: cannot start: %s: %s", type(exc).__name__, exc)
        raise SystemExit(1) from None


@worker_ready.connect
def _start_beating(**_: object) -> None:
    """Heartbeat and liveness once the worker consumes: an idle worker is alive too.
    The process has finished starting here, so its collector is tuned (:mod:`app.gctune`)."""
    from app.gctune import tune_gc
    from workers.runtime import get_runtime

    get_runtime().start_beating()
    tune_gc()


@worker_shutdown.connect
def _close_runtime(**_: object) -> None:
    from workers.runtime import shutdown_runtime

    shutdown_runtime()


def main(argv: list[str]) -> int:
    """Run a worker consuming the given queues with Celery's thread pool.

    Threads only wait: the work runs as coroutines on the process's single
    event loop (see :mod:`workers.runtime`), so ``--concurrency`` is the number
    of polls or deliveries in flight in this process.
    """
    from app.logging import setup_logging
    from app.settings import get_settings, load_settings_or_exit
    from workers.celery_app import get_celery

    settings = load_settings_or_exit()
    parser = argparse.ArgumentParser(prog="pollinator worker")
    parser.add_argument("--queues", "-Q", required=True, help="comma-separated: poll, delivery")
    parser.add_argument(
        "--concurrency",
        "-c",
        type=int,
        default=None,
        help="polls or deliveries in flight in this process",
    )
    parser.add_argument("--loglevel", default=settings.log_level)
    args = parser.parse_args(argv)
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    valid = {q.value for q in Queue}
    unknown = [q for q in queues if q not in valid]
    if not queues or unknown:
        parser.error(f"--queues: unknown queue(s) {unknown or queues}; use poll and/or delivery")
    if args.concurrency:
        # In-flight polls/deliveries are the runtime's slots, read from settings.
        for name in ("POLLINATOR_POLL_CONCURRENCY", "POLLINATOR_DELIVERY_CONCURRENCY"):
            os.environ[name] = str(args.concurrency)
        get_settings.cache_clear()
        settings = load_settings_or_exit()
    in_flight = max(
        settings.poll_concurrency if Queue.POLL.value in queues else 0,
        settings.delivery_concurrency if Queue.DELIVERY.value in queues else 0,
    )
    # Each Celery thread carries one batch (of up to TASK_BATCH) whose items share the slots;
    # twice as many batches as it takes to fill the slots keeps them busy.
    threads = max(4, 2 * math.ceil(in_flight / TASK_BATCH))
    setup_logging(args.loglevel, settings.log_format)
    from workers.runtime import announce_as

    announce_as([f"worker-{q}" for q in queues])
    name = f"{'+'.join(queues)}-{os.getpid()}@{socket.gethostname()}"
    get_celery().worker_main(
        [
            "worker",
            "-Q",
            ",".join(queues),
            "-P",
            "threads",
            "-c",
            str(threads),
            "-n",
            name,
            "--loglevel",
            args.loglevel,
            "--without-mingle",
            "--without-gossip",
        ]
    )
    return 0
