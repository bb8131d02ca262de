"""Throughput of compiled SimpleDateFormat patterns against the standard library, same run.

    .venv/bin/python bench/bench_dateformats.py [--n 200000]

Parsing happens for every record of every poll, so it is the number that matters; the
baselines show what the stdlib costs for the same strings (``strptime`` is the general-purpose
parser, ``fromisoformat`` a C fast path that only reads ISO 8601).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from app.domain.dateformats import compile_format

KEAP = "yyyy-MM-dd'T'HH:mm:ss.SSSZ"
LA = ZoneInfo("America/Los_Angeles")


def _rate(label: str, n: int, func: Callable[[], object]) -> float:
    start = time.perf_counter()
    for _ in range(n):
        func()
    per_second = n / (time.perf_counter() - start)
    print(f"  {label:<58} {per_second:>12,.0f} /s")
    return per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="calls per measurement")
    parser.add_argument("--quick", action="store_true", help="20,000 calls per measurement")
    args = parser.parse_args()
    n = 20_000 if args.quick else args.n

    keap = compile_format(KEAP)
    rfc = compile_format("EEE, dd MMM yyyy HH:mm:ss Z")
    naive = compile_format("yyyy/MM/dd HH:mm:ss")
    millis = compile_format("milliseconds")
    instant = datetime(2022, 9, 28, 19, 21, 25, 123000, tzinfo=UTC)
    keap_text = keap.format(instant, UTC)
    rfc_text = rfc.format(instant, LA)
    naive_text = naive.format(instant, UTC)
    millis_value = int(millis.format(instant, UTC))

    print(f"parse ({n:,} calls each)")
    ours = _rate(f"compiled {KEAP!r}", n, lambda: keap.parse(keap_text, UTC))
    baseline = _rate(
        "datetime.strptime('%Y-%m-%dT%H:%M:%S.%f%z')",
        n,
        lambda: datetime.strptime(keap_text, "%Y-%m-%dT%H:%M:%S.%f%z"),
    )
    _rate("datetime.fromisoformat (C, ISO only)", n, lambda: datetime.fromisoformat(keap_text))
    _rate("compiled 'EEE, dd MMM yyyy HH:mm:ss Z'", n, lambda: rfc.parse(rfc_text, UTC))
    _rate(
        "compiled 'yyyy/MM/dd HH:mm:ss' in America/Los_Angeles",
        n,
        lambda: naive.parse(naive_text, LA),
    )
    _rate("compiled 'milliseconds' (int)", n, lambda: millis.parse(millis_value, UTC))
    _rate(
        "baseline epoch + timedelta(milliseconds=...)",
        n,
        lambda: datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=millis_value),
    )
    print(f"  compiled Keap parse vs strptime: {ours / baseline:.1f}x")

    print(f"format ({n:,} calls each)")
    ours = _rate(f"compiled {KEAP!r}", n, lambda: keap.format(instant, UTC))
    _rate(
        "datetime.strftime('%Y-%m-%dT%H:%M:%S.%f%z')",
        n,
        lambda: instant.strftime("%Y-%m-%dT%H:%M:%S.%f%z"),
    )
    baseline = _rate(
        "datetime.isoformat(timespec='milliseconds')",
        n,
        lambda: instant.isoformat(timespec="milliseconds"),
    )
    _rate("compiled 'EEE, dd MMM yyyy HH:mm:ss Z' in LA", n, lambda: rfc.format(instant, LA))
    print(f"  compiled Keap format vs isoformat: {ours / baseline:.2f}x")


if __name__ == "__main__":
    main()
