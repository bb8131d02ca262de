"""Micro-benchmarks of the pure polling/delivery code against same-run baselines.

Run: ``.venv/bin/python bench/bench_domain.py [--quick]``.

Baselines are what the poller cannot avoid anyway, measured in the same process on the same
data: ``json.loads`` of the page body holding the records (the fetch path) and ``json.dumps``
of the same records (the payload path). A ratio near or below 1 means the domain code costs
no more than parsing the provider's JSON once.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.domain.delta import compute_delta
from app.domain.events import (
    EventRecord,
    InstanceInfo,
    build_payload,
    chunk_events,
    event_id,
)
from app.domain.pollconfig import default_poller_configuration
from app.domain.watermark import Watermark, initial_watermark

T0 = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)


def keap(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}+0000"


def contact(i: int, rng: random.Random) -> dict[str, Any]:
    """A Keap-shaped contact (~25 fields): the dates the delta reads plus realistic bulk."""
    updated = T0 + timedelta(milliseconds=rng.randrange(0, 3_600_000))
    created = updated - timedelta(seconds=rng.choice([0, 0, 86_400 * rng.randrange(1, 900)]))
    return {
        "id": 100_000 + i,
        "given_name": f"Given{i}",
        "family_name": f"Family{i}",
        "email_addresses": [{"email": f"user{i}@example.com", "field": "EMAIL1"}],
        "phone_numbers": [{"number": f"+1555{i:07d}", "field": "PHONE1", "type": "Work"}],
        "addresses": [
            {
                "line1": f"{i} Main St",
                "locality": "Springfield",
                "region": "IL",
                "postal_code": "62701",
                "country_code": "USA",
                "field": "BILLING",
            }
        ],
        "company": {"id": i % 500, "company_name": f"Company {i % 500}"},
        "tag_ids": [1, 2, 3],
        "owner_id": 7,
        "lead_source_id": None,
        "email_status": "SingleOptIn",
        "email_opted_in": True,
        "score_value": str(i % 100),
        "preferred_locale": "en_US",
        "time_zone": "America/Chicago",
        "date_created": keap(created),
        "last_updated": keap(updated.replace(microsecond=0)),
        "last_updated_utc_millis": int(updated.timestamp() * 1000),
        "custom_fields": [{"id": k, "content": f"value {k}"} for k in range(5)],
    }


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def row(name: str, seconds: float, baseline: float, unit_count: int, unit: str) -> str:
    per = seconds / unit_count * 1e6
    return f"{name:<48} {seconds * 1000:9.2f} ms {per:8.2f} µs/{unit:<7} {seconds / baseline:6.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer records and repetitions")
    args = parser.parse_args()
    n_records = 2_000 if args.quick else 10_000
    n_chunks = 200 if args.quick else 1_000
    repeat = 3 if args.quick else 7

    rng = random.Random(42)
    records = [contact(i, rng) for i in range(n_records)]
    body = json.dumps({"contacts": records}).encode()
    configs = default_poller_configuration()
    contacts, opportunities = configs["contacts"], configs["opportunities"]
    started = T0 + timedelta(hours=2)
    fresh = initial_watermark(T0)
    caught_up = Watermark(T0 + timedelta(hours=1, seconds=1), frozenset())

    load = best_of(repeat, lambda: json.loads(body))
    print(f"{n_records} contacts, page body {len(body) / 1e6:.1f} MB; best of {repeat}\n")
    print(f"{'compute_delta':<48} {'total':>12} {'per unit':>17} {'vs json.loads':>9}")
    print(row("baseline: json.loads(page body)", load, load, n_records, "record"))
    cases = [
        ("contacts (ms dates), every record a change", contacts, fresh),
        ("contacts (ms dates), nothing changed", contacts, caught_up),
        ("opportunities-like (second dates), all changes", opportunities, fresh),
    ]
    for name, cfg, wm in cases:
        took = best_of(repeat, functools.partial(compute_delta, records, cfg, wm, started))
        print(row(name, took, load, n_records, "record"))

    delta = compute_delta(records, contacts, fresh, started)
    events = [
        EventRecord(
            event_id(42, "contacts", c.object_id, c.date),
            "contacts",
            c.object_id,
            c.event_type,
            c.date,
            c.record,
        )
        for c in delta.changes
    ]
    while len(events) < n_chunks * 10:
        events += events
    chunks = chunk_events(events[: n_chunks * 10])
    info = InstanceInfo(42, "API Instance with Polling", ["crm"], 7)
    dumps = best_of(
        repeat,
        lambda: [json.dumps([e.record for e in chunk]).encode() for chunk in chunks],
    )
    payloads = best_of(repeat, lambda: [build_payload(info, chunk, started) for chunk in chunks])
    ids = best_of(
        repeat,
        lambda: [event_id(42, "contacts", c.object_id, c.date) for c in delta.changes],
    )
    print(f"\n{'payloads':<48} {'total':>12} {'per unit':>17} {'vs json.dumps':>9}")
    print(row("baseline: json.dumps(records of each chunk)", dumps, dumps, len(chunks), "chunk"))
    print(row(f"build_payload x {len(chunks)} chunks of 10", payloads, dumps, len(chunks), "chunk"))
    print(row(f"event_id x {len(delta.changes)}", ids, dumps, len(delta.changes), "event"))


if __name__ == "__main__":
    main()
