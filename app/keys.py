"""Every Redis key name Pollinator uses, in one place."""

from __future__ import annotations

PREFIX = "pollinator"


def watermark(instance_id: int, resource: str) -> str:
    """Hash {at, ids} of one (instance, resource) watermark; checkpointed in PostgreSQL."""
    return f"{PREFIX}:wm:{instance_id}:{resource}"


def poll_lock(instance_id: int) -> str:
    """Held while one poll of the instance runs: polls of one instance never overlap."""
    return f"{PREFIX}:lock:poll:{instance_id}"


def refresh_lock(instance_id: int) -> str:
    """Single-flight OAuth refresh of one instance across all workers."""
    return f"{PREFIX}:lock:refresh:{instance_id}"


def beat_leader() -> str:
    """Held by the one beat process allowed to schedule."""
    return f"{PREFIX}:lock:beat"


def app_budget(client_id: str) -> str:
    """Per-OAuth-app request budget (Keap throttles per app, not per instance)."""
    return f"{PREFIX}:budget:{client_id}"


def alive(role: str) -> str:
    """Sorted set of the processes of one role that announced themselves (app.liveness)."""
    return f"{PREFIX}:alive:{role}"


def retention_report() -> str:
    """JSON report of the last retention purge run (``/metrics``, ``pollinator status``)."""
    return f"{PREFIX}:retention:last"
