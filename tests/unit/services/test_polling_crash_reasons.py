"""The pure parts of quarantining: which claimed rows are isolated, and what the tenant reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from app.domain.pollconfig import ConfigError
from app.services.polling import QUARANTINE_AFTER_CRASHES, crash_reason
from workers.beat import plan_claim

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
DUE = NOW - timedelta(seconds=1)


def test_each_row_is_planned_on_its_own() -> None:
    rows = [
        (1, DUE, 4_193_436_587 * 60.0),  # the reported interval
        (2, DUE, 60.0),
        (3, None, 60.0),  # a stored slot outside the calendar, read as NULL
        (4, DUE, float("nan")),
        (5, DUE.replace(tzinfo=None), 60.0),  # a bug: naive time (TypeError), not a ScheduleError
        (6, DUE, 900.0),
    ]
    scheduled, claim = plan_claim(rows, NOW)
    assert [(c.instance_id, slot) for c, slot in scheduled] == [
        (2, DUE + timedelta(seconds=60)),
        (6, DUE + timedelta(seconds=900)),
    ]
    reasons = {q.instance_id: q.reason for q in claim.quarantined}
    assert sorted(reasons) == [1, 3, 4, 5]
    assert "falls after 9999-12-30" in reasons[1]
    assert "outside 0001-01-02 .. 9999-12-30" in reasons[3]
    assert "interval must be a positive number" in reasons[4]
    assert reasons[5] == "next poll time cannot be computed (TypeError)"
    assert claim.polls == []  # filled once the database accepted the new slots


def test_crash_reasons_show_domain_messages_and_only_the_type_of_anything_else() -> None:
    config = crash_reason(ConfigError("event.poller.configuration.contacts.pageSize", "too big"))
    assert config == (
        f"polls crashed {QUARANTINE_AFTER_CRASHES} times in a row (ConfigError: "
        "event.poller.configuration.contacts.pageSize: too big); "
        "polling is paused until the instance is updated"
    )
    # An arbitrary exception's text may carry internals; the tenant sees its type only.
    other = crash_reason(KeyError("oauth.api.secret=hunter2"))
    assert "(KeyError)" in other
    assert "hunter2" not in other
    assert len(crash_reason(ConfigError("x", "y" * 10_000))) <= 500
