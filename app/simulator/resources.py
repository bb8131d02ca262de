"""What each simulated Keap resource looks like: field names, dates, filters, orderings.

Records are not stored as dicts. A record is ``(id, created_ms, updated_ms)`` plus, only when the
admin API set fields explicitly, an overlay dict; everything else is derived on render from a hash
of ``(account salt, id)``. That keeps 10,000 accounts x hundreds of records in a few hundred MB.

Date filters (``since``/``until``), per Keap's SDK (reference §2.2):

===============  ==================================  ======================================
resource         exposed dates                       since/until compares
===============  ==================================  ======================================
contacts         date_created, last_updated (+ms)    updated time
orders           creation_date, modification_date    updated time (modification_date)
tasks            creation_date, modification_date    updated time (modification_date)
appointments     start_date, end_date only           updated time (internal; not rendered)
transactions     transaction_date                    transaction_date (= created time)
opportunities    date_created, last_updated          ignored (Keap has no date filter)
notes, files     date_created, last_updated          ignored
companies        none                                ignored
products         none                                ignored
===============  ==================================  ======================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from app.simulator.dates import render_keap

__all__ = ["RESOURCES", "RESOURCE_NAMES", "OrderKey", "ResourceSpec", "content_hash"]

FilterOn = Literal["updated", "created"] | None
# How an ``order=`` value sorts: by id, by the internal created/updated ms, or by a rendered field.
OrderKey = Literal["id", "created", "updated"] | tuple[Literal["field"], str]
Record = dict[str, Any]
Renderer = Callable[[int, int, int, int], Record]

_FIRST = (
    "Ann Bob Cara Dan Eve Finn Gia Hal Ivy Jon Kim Leo Mia Ned Oda Pia "
    "Quin Rae Sam Tia Uma Vic Wes Xia Yan Zoe Abe Bea Cal Dee Eli Fay"
).split()
_LAST = (
    "Smith Jones Brown Lee Garcia Miller Davis Wilson Moore Taylor Clark Lewis Young Hall Allen "
    "King Wright Scott Green Baker Adams Nelson Hill Campbell Mitchell Roberts Carter Phillips "
    "Evans Turner Torres Parker"
).split()
_WORDS = (
    "alpha bravo cedar delta ember falcon garnet harbor indigo juniper kestrel lumen meadow "
    "nova orchid pioneer quartz river summit tundra umber vertex willow xenon yarrow zephyr"
).split()
_DAY_MS = 86_400_000


def content_hash(salt: int, rid: int) -> int:
    """A cheap deterministic 32-bit mix of (account salt, record id)."""
    h = ((rid * 0x9E3779B1) ^ salt) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    return h ^ (h >> 13)


def _person(h: int) -> tuple[str, str, str]:
    first = _FIRST[h % len(_FIRST)]
    last = _LAST[(h >> 5) % len(_LAST)]
    return first, last, f"{first.lower()}.{last.lower()}{h % 997}@example.com"


def _contact(rid: int, created: int, updated: int, salt: int) -> Record:
    first, last, email = _person(content_hash(salt, rid))
    return {
        "id": rid,
        "given_name": first,
        "family_name": last,
        "middle_name": None,
        "email_addresses": [{"email": email, "field": "EMAIL1"}],
        "phone_numbers": [],
        "addresses": [],
        "tag_ids": [],
        "company": None,
        "owner_id": None,
        "email_opted_in": False,
        "email_status": "UnengagedMarketable",
        "date_created": render_keap(created),
        "last_updated": render_keap(updated),
        "last_updated_utc_millis": updated,
    }


def _contact_ref(h: int) -> Record:
    first, last, email = _person(h)
    return {"id": 1 + h % 500, "first_name": first, "last_name": last, "email": email}


def _opportunity(rid: int, created: int, updated: int, salt: int) -> Record:
    h = content_hash(salt, rid)
    return {
        "id": rid,
        "opportunity_title": f"{_WORDS[h % len(_WORDS)].title()} deal {rid}",
        "contact": _contact_ref(h),
        "stage": {"id": 1 + h % 5, "name": ("Lead", "Qualified", "Proposal", "Won", "Lost")[h % 5]},
        "user": {"id": 1 + (h >> 3) % 7},
        "projected_revenue_low": float(h % 5000),
        "projected_revenue_high": float(h % 5000 + 1000),
        "estimated_close_date": render_keap(created + 30 * _DAY_MS),
        "next_action_date": render_keap(created + 7 * _DAY_MS),
        "date_created": render_keap(created),
        "last_updated": render_keap(updated),
    }


def _order(rid: int, created: int, updated: int, salt: int) -> Record:
    h = content_hash(salt, rid)
    total = round((h % 100_000) / 100, 2)
    return {
        "id": rid,
        "title": f"Order {rid}",
        "status": "PAID" if h % 3 else "UNPAID",
        "total": total,
        "total_paid": total if h % 3 else 0.0,
        "total_due": 0.0 if h % 3 else total,
        "contact": _contact_ref(h),
        "order_date": render_keap(created),
        "creation_date": render_keap(created),
        "modification_date": render_keap(updated),
        "order_items": [],
        "recurring": False,
        "source_type": "API",
    }


def _task(rid: int, created: int, updated: int, salt: int) -> Record:
    h = content_hash(salt, rid)
    return {
        "id": rid,
        "title": f"Call {_FIRST[h % len(_FIRST)]} about {_WORDS[(h >> 4) % len(_WORDS)]}",
        "description": "",
        "completed": bool(h % 2),
        "priority": 1 + h % 3,
        "type": "Call",
        "contact": _contact_ref(h),
        "user_id": 1 + (h >> 3) % 7,
        "due_date": render_keap(created + 3 * _DAY_MS),
        "completion_date": None,
        "creation_date": render_keap(created),
        "modification_date": render_keap(updated),
    }


def _appointment(rid: int, created: int, updated: int, salt: int) -> Record:
    h = content_hash(salt, rid)
    start = created + _DAY_MS
    return {
        "id": rid,
        "title": f"Meeting {_WORDS[h % len(_WORDS)]}",
        "description": "",
        "location": "Online",
        "contact_id": 1 + h % 500,
        "user": 1 + (h >> 3) % 7,
        "start_date": render_keap(start),
        "end_date": render_keap(start + 3_600_000),
        "remind_time": 15,
    }


def _transaction(rid: int, created: int, updated: int, salt: int) -> Record:
    h = content_hash(salt, rid)
    return {
        "id": rid,
        "amount": round((h % 100_000) / 100, 2),
        "currency": "USD",
        "gateway": "KEAP_PAYMENTS",
        "gateway_account_name": "Keap Payments",
        "type": "Sale",
        "status": "Approved",
        "test": False,
        "collection_method": "MANUAL",
        "contact_id": 1 + h % 500,
        "orders": [],
        "errors": None,
        "transaction_date": render_keap(created),
    }


def _file(rid: int, created: int, updated: int, salt: int) -> Record:
    h = content_hash(salt, rid)
    return {
        "id": rid,
        "file_name": f"{_WORDS[h % len(_WORDS)]}-{rid}.pdf",
        "file_size": 1000 + h % 100_000,
        "category": "Attachments",
        "file_box_type": "Application",
        "contact_id": 1 + h % 500,
        "created_by": 1 + (h >> 3) % 7,
        "public": False,
        "remote_file_key": None,
        "date_created": render_keap(created),
        "last_updated": render_keap(updated),
    }


def _note(rid: int, created: int, updated: int, salt: int) -> Record:
    h = content_hash(salt, rid)
    user_id = 1 + (h >> 3) % 7
    return {
        "id": rid,
        "title": f"Note about {_WORDS[h % len(_WORDS)]}",
        "body": "Followed up by phone.",
        "type": "Other",
        "contact_id": 1 + h % 500,
        "user_id": user_id,
        "date_created": render_keap(created),
        "last_updated": render_keap(updated),
        "last_updated_by": {"user_id": user_id},
    }


def _company(rid: int, created: int, updated: int, salt: int) -> Record:
    h = content_hash(salt, rid)
    name = f"{_WORDS[h % len(_WORDS)].title()} {_LAST[(h >> 5) % len(_LAST)]} Ltd"
    return {
        "id": rid,
        "company_name": name,
        "email_address": {"email": f"info{rid}@example.com", "field": "EMAIL1"},
        "phone_number": None,
        "address": None,
    }


def _product(rid: int, created: int, updated: int, salt: int) -> Record:
    h = content_hash(salt, rid)
    return {
        "id": rid,
        "product_name": f"{_WORDS[h % len(_WORDS)].title()} plan",
        "product_desc": "",
        "product_short_desc": "",
        "product_price": float(10 + h % 500),
        "sku": f"SKU-{rid}",
        "status": 1,
        "subscription_only": False,
    }


@dataclass(frozen=True, slots=True)
class ResourceSpec:
    """Static description of one list endpoint."""

    name: str
    render: Renderer
    filter_on: FilterOn
    orders: Mapping[str, OrderKey]
    # Fields the admin API may not overwrite (they are computed from id / times).
    computed: frozenset[str]


def _spec(
    name: str,
    render: Renderer,
    filter_on: FilterOn,
    orders: Mapping[str, OrderKey],
    dates: tuple[str, ...],
) -> ResourceSpec:
    return ResourceSpec(name, render, filter_on, {"id": "id", **orders}, frozenset(("id", *dates)))


RESOURCES: dict[str, ResourceSpec] = {
    spec.name: spec
    for spec in (
        _spec(
            "contacts",
            _contact,
            "updated",
            {
                "date_created": "created",
                "name": ("field", "family_name"),
                "email": ("field", "email"),
            },
            ("date_created", "last_updated", "last_updated_utc_millis"),
        ),
        _spec(
            "opportunities",
            _opportunity,
            None,
            {
                "date_created": "created",
                "opportunity_name": ("field", "opportunity_title"),
                "next_action": ("field", "next_action_date"),
            },
            ("date_created", "last_updated"),
        ),
        _spec(
            "orders",
            _order,
            "updated",
            {"order_date": "created", "creation_date": "created", "modification_date": "updated"},
            ("creation_date", "modification_date", "order_date"),
        ),
        _spec(
            "tasks",
            _task,
            "updated",
            {
                "due_date": "created",
                "creation_date": "created",
                "modification_date": "updated",
            },
            ("creation_date", "modification_date"),
        ),
        _spec(
            "appointments",
            _appointment,
            "updated",
            {"start_date": "created"},
            ("start_date", "end_date"),
        ),
        _spec(
            "transactions",
            _transaction,
            "created",
            {"transaction_date": "created"},
            ("transaction_date",),
        ),
        _spec(
            "files",
            _file,
            None,
            {"date_created": "created", "last_updated": "updated"},
            ("date_created", "last_updated"),
        ),
        _spec(
            "notes",
            _note,
            None,
            {"date_created": "created", "last_updated": "updated"},
            ("date_created", "last_updated"),
        ),
        _spec(
            "companies",
            _company,
            None,
            {"date_created": "created", "name": ("field", "company_name")},
            (),
        ),
        _spec("products", _product, None, {}, ()),
    )
}
RESOURCE_NAMES: tuple[str, ...] = tuple(RESOURCES)
