"""``pollinator worker --queues poll|delivery``: a Celery worker on its own asyncio runtime."""

from __future__ import annotations

import argparse
import os
import socket

from celery.signals import worker_shutdown

from workers.queues import Queue


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
    from app.settings import load_settings_or_exit
    from workers.celery_app import get_celery

    settings = load_settings_or_exit()
    parser = argparse.ArgumentParser(prog="pollinator worker")
    parser.add_argument("--queues", "-Q", required=True, help="comma-separated: poll, delivery")
    parser.add_argument("--concurrency", "-c", type=int, default=None)
    parser.add_argument("--loglevel", default=settings.log_level)
    args = parser.parse_args(argv)
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    valid = {q.value for q in Queue}
    unknown = [q for q in queues if q not in valid]
    if not queues or unknown:
        parser.error(f"--queues: unknown queue(s) {unknown or queues}; use poll and/or delivery")
    concurrency = args.concurrency or (
        settings.poll_concurrency if Queue.POLL.value in queues else settings.delivery_concurrency
    )
    setup_logging(args.loglevel)
    name = f"{'+'.join(queues)}-{os.getpid()}@{socket.gethostname()}"
    get_celery().worker_main(
        [
            "worker",
            "-Q",
            ",".join(queues),
            "-P",
            "threads",
            "-c",
            str(concurrency),
            "-n",
            name,
            "--loglevel",
            args.loglevel,
            "-E",
            "--without-mingle",
            "--without-gossip",
        ]
    )
    return 0
