"""Open Connectors' documented infusionsoftrest configuration works against raw Keap records."""

from __future__ import annotations

from datetime import UTC, datetime

from app.domain.delta import compute_delta
from app.domain.pollconfig import parse_poller_configuration
from app.domain.watermark import Watermark

# Open Connectors' own default for appointments (the only one it documents), verbatim.
OC_APPOINTMENTS = {
    "appointments": {
        "url": "/hubs/crm/appointments",
        "idField": "id",
        "datesConfiguration": {
            "updatedDateField": "modification_date",
            "updatedDateFormat": "yyyy-MM-dd'T'HH:mm:ss.SSS'Z'",
            "updatedDateTimezone": "GMT",
            "createdDateField": "creation_date",
            "createdDateFormat": "yyyy-MM-dd'T'HH:mm:ss.SSS'Z'",
            "createdDateTimezone": "GMT",
        },
    }
}
# The same shape copied to contacts and orders, as Open Connectors tells users to do.
OC_COPIED = {
    name: {**OC_APPOINTMENTS["appointments"], "url": f"/hubs/crm/{name}"}
    for name in ("contacts", "orders", "transactions")
}
WATERMARK = Watermark(datetime(2026, 11, 1, tzinfo=UTC), frozenset())
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _delta(config: dict[str, object], resource: str, records: list[dict[str, object]]) -> object:
    cfg = parse_poller_configuration(config)[resource]
    return compute_delta(records, cfg, WATERMARK, NOW)


def test_the_documented_appointments_configuration_polls_keap_appointments() -> None:
    # Keap appointments carry no creation or modification date at all.
    records = [{"id": 7, "title": "call", "start_date": "2026-11-20T10:00:00.000+0000"}]
    cfg = parse_poller_configuration(OC_APPOINTMENTS)["appointments"]
    assert cfg.updated is None
    assert cfg.created is None
    delta = compute_delta(records, cfg, WATERMARK, NOW, baseline=False)
    assert not delta.skipped_unparseable
    assert [(c.object_id, c.event_type) for c in delta.changes] == [("7", "CREATED")]


def test_hub_date_names_read_keaps_fields_in_keaps_format() -> None:
    contact = {
        "id": 1,
        "date_created": "2026-10-20T10:00:00.000+0000",  # before the watermark: an update
        "last_updated": "2026-11-21T10:00:00.000+0000",
    }
    order = {
        "id": 2,
        "creation_date": "2026-11-22T10:00:00.000+0000",
        "modification_date": "2026-11-22T10:00:00.000+0000",
    }
    transaction = {"id": 3, "transaction_date": "2026-11-23T10:00:00.000+0000"}
    configs = parse_poller_configuration(OC_COPIED)
    assert configs["contacts"].updated is not None
    assert configs["contacts"].updated.path == "last_updated"
    for name, record, kind in (
        ("contacts", contact, "UPDATED"),
        ("orders", order, "CREATED"),
        ("transactions", transaction, "CREATED"),
    ):
        delta = compute_delta([record], configs[name], WATERMARK, NOW)
        assert not delta.skipped_unparseable, (name, delta.skipped_unparseable)
        assert [c.event_type for c in delta.changes] == [kind], name


def test_keap_paths_and_keap_names_are_left_as_written() -> None:
    raw = {
        "contacts": {
            "url": "/contacts",
            "idField": "id",
            "datesConfiguration": {"updatedDateField": "modification_date"},
        }
    }
    assert parse_poller_configuration(raw)["contacts"].updated.path == "modification_date"  # type: ignore[union-attr]
    hub_keap_names = {
        "contacts": {
            "url": "/hubs/crm/contacts",
            "idField": "id",
            "datesConfiguration": {
                "updatedDateField": "last_updated",
                "updatedDateFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSZ",
            },
        }
    }
    field = parse_poller_configuration(hub_keap_names)["contacts"].updated
    assert field is not None
    assert field.path == "last_updated"
