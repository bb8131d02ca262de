"""The ``pollinator`` console script.

Each sub-command lives in its own module and owns its argument parsing; this
module only dispatches, so importing the CLI never imports Celery, the
database layer or the simulator unless that command is run.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, one-line help). Each module exposes ``main(argv) -> int``.
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("app.supervisor", "run the whole stack on this machine (embedded services, demo)"),
    "api": ("app.api.server", "run the HTTP API process"),
    "beat": ("workers.beat", "run the scheduler (Celery beat)"),
    "worker": ("workers.worker", "run a Celery worker (--queues poll|delivery)"),
    "migrate": ("app.migrate", "apply database migrations (alembic upgrade head)"),
    "services": ("app.embedded", "services up: run embedded PostgreSQL + Redis"),
    "org": (
        "app.orgs",
        "org create NAME | delete ID | retention ID [--payload-days D] [--metadata-days D]",
    ),
    "simulate": ("app.simulator.cli", "run the Infusionsoft (Keap) simulator"),
    "sink": ("app.sink", "run a callback receiver that records every request"),
    "loadtest": ("app.loadtest.cli", "run a load test against the whole stack"),
    "status": ("workers.status", "is the stack healthy, and what is failing (--json)"),
    "instances": ("app.operator", "instances list|show ID: operator view, all organizations"),
    "events": ("app.operator", "events tail ID: follow one instance's event log"),
}

# The processes of a multi-host deployment, as ``pollinator`` arguments: deploy/ (compose,
# Kubernetes, systemd) runs each of them, and tests/deploy checks that it does. Flower, the
# other deployed process, is Celery's own command: ``celery -A workers.celery_entry flower``.
DEPLOY_ROLES: tuple[tuple[str, ...], ...] = (
    ("migrate",),
    ("api",),
    ("beat",),
    ("worker", "--queues", "poll"),
    ("worker", "--queues", "delivery"),
)


def _usage() -> str:
    lines = ["usage: pollinator COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``pollinator COMMAND ...`` to the command's module."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"pollinator: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    # app.operator serves two commands; it parses the command word itself.
    result: int = module.main(args if module.__name__ == "app.operator" else rest)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
