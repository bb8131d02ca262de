"""Every Redis key name Pollinator uses, in one place.

Each function documents what the key holds and who uses it; a module that needs a key
calls the function here rather than building the string, so renaming a key (or finding
every user of one) is one grep. Celery's own broker/result keys are Celery's business.
"""

from __future__ import annotations

import hashlib

PREFIX = "pollinator"


def watermark(instance_id: int, resource: str) -> str:
    """The Redis copy of one (instance, resource) watermark; checkpointed in PostgreSQL.

    Read and written only by :class:`app.store.watermarks.WatermarkStore`; its value is the
    stored form of :class:`app.domain.watermark.Encoded`. ``wm2``: versions before it kept
    a JSON document under ``wm``, which they cannot read in the new form — the new name
    keeps old and new workers apart during a rolling upgrade (each reads only its own
    copies; the checkpoint covers both), and the old keys are never read again.
    """
    return f"{PREFIX}:wm2:{instance_id}:{resource}"


def poll_lock(instance_id: int) -> str:
    """Held while one poll of the instance runs: polls of one instance never overlap."""
    return f"{PREFIX}:lock:poll:{instance_id}"


def refresh_lock(instance_id: int) -> str:
    """Single-flight OAuth refresh of one instance across all workers."""
    return f"{PREFIX}:lock:refresh:{instance_id}"


def beat_leader() -> str:
    """Held by the one beat process allowed to schedule."""
    return f"{PREFIX}:lock:beat"


def app_budget(organization_id: int, client_id: str) -> str:
    """Request budget of one OAuth app *as used by one organization*.

    Keap throttles per app (client id), so the budget is shared by every instance of
    the app, but only within one organization: the client id is tenant input, and a
    budget keyed by it alone let one tenant spend (or exhaust) another's by claiming
    the same client id. The cost of scoping: two organizations that really share one
    Keap app each get the full rate, and if together they exceed Keap's limit the
    provider's 429s (handled with ``Retry-After``) slow only that app's instances.
    The client id is hashed so a tenant's string never shapes a Redis key.
    """
    digest = hashlib.sha256(client_id.encode()).hexdigest()[:32]
    return f"{PREFIX}:budget:{organization_id}:{digest}"


def app_budget_window(budget: str, second: int) -> str:
    """Counter of the requests spent in one wall-clock ``second`` of an :func:`app_budget`."""
    return f"{budget}:{second}"


def api_rate(organization_id: int) -> str:
    """The organization's API request token bucket (hash of tokens and last refill time)."""
    return f"{PREFIX}:apirate:{organization_id}"


def alive(role: str) -> str:
    """Sorted set of the processes of one role that announced themselves (app.liveness)."""
    return f"{PREFIX}:alive:{role}"


def breaker(origin: str) -> str:
    """Circuit breaker state of one callback origin (hash: failures, opens, open_until)."""
    return f"{PREFIX}:cb:{origin}"


def breaker_probe(origin: str) -> str:
    """Held by the one delivery allowed to probe an origin whose cooldown is over."""
    return f"{breaker(origin)}:probe"


def breakers_open() -> str:
    """Sorted set of callback origins whose circuit breaker is open (score: open until)."""
    return f"{PREFIX}:cb:open"


def retention_report() -> str:
    """JSON report of the last retention purge run (``/metrics``, ``pollinator status``)."""
    return f"{PREFIX}:retention:last"


def metric(name: str) -> str:
    """Hash of one metric family shared by every process (app.metrics): series → value."""
    return f"{PREFIX}:m:{name}"


def poll_journal() -> str:
    """Bounded stream of one line per finished poll (read by the load test and operators)."""
    return f"{PREFIX}:journal:polls"
