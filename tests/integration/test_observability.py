"""The Grafana dashboard and the Prometheus alert rules under deploy/ name only real metrics.

Each metric name they use must be a family the API's ``/metrics`` declares (``# TYPE``)
on a live app, histogram and counter suffixes included: a renamed metric would otherwise
leave a dashboard blank and an alert that can never fire.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from app import keys, metrics
from app.metrics import MetricsBatch
from tests.conftest import ROOT, ServiceUrls

OBSERVABILITY = ROOT / "deploy" / "observability"
_NAME_RE = re.compile(r"\bpollinator_[a-z_]+")
_SUFFIXES = ("_bucket", "_sum", "_count")


def _exprs_of_dashboard(path: Path) -> list[str]:
    dashboard = json.loads(path.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def _exprs_of_rules(path: Path) -> list[str]:
    rules = yaml.safe_load(path.read_text())
    exprs = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
            exprs.append(str(rule["expr"]))
            exprs += _NAME_RE.findall(json.dumps(rule["annotations"]))
    return exprs


def _declared(metrics_text: str) -> set[str]:
    names = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "counter":  # prometheus_client declares a counter by its base name
                names.add(name.removesuffix("_total") + "_total")
            if kind == "histogram":
                names |= {name + suffix for suffix in _SUFFIXES}
    return names


async def test_every_metric_the_dashboard_and_alerts_name_exists(
    api: TestClient[Any, Any],
) -> None:
    resp = await api.get("/metrics")
    assert resp.status == 200
    declared = _declared(await resp.text())
    exprs = _exprs_of_dashboard(OBSERVABILITY / "grafana-dashboard.json")
    exprs += _exprs_of_rules(OBSERVABILITY / "prometheus-alerts.yaml")
    named = {n for e in exprs for n in _NAME_RE.findall(e)}
    assert len(named) >= 12
    assert named - declared == set()


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, parsed by prometheus_client's own parser."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_expose_what_workers_recorded(
    api: TestClient[Any, Any], service_urls: ServiceUrls
) -> None:
    """What the workers write to Redis comes out of the API's /metrics: counters with their
    labels, histograms with cumulative buckets, the open-breaker gauge."""

    async def scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        resp = await api.get("/metrics")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return _samples(await resp.text())

    def delta(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    before = await scrape()
    batch = MetricsBatch()
    batch.inc(metrics.DELIVERY_ATTEMPTS, {"outcome": "delivered"}, 2)
    batch.inc(metrics.DELIVERY_ATTEMPTS, {"outcome": "retry_timeout"})
    batch.observe(metrics.DELIVERY_LATENCY, 0.3)
    batch.observe(metrics.DELIVERY_LATENCY, 7.0)
    line = ("instance", "9", "scheduled", "", "started", "2026-12-01T12:00:00+00:00")
    batch.journal_line(line)
    redis = Redis.from_url(service_urls.redis_url, decode_responses=True)
    try:
        await batch.flush(redis)
        [(_, journaled)] = await redis.xrevrange(metrics.POLL_JOURNAL, count=1)
        origin = f"https://metrics-test-{uuid.uuid4().hex[:8]}.example:443"
        await redis.zadd(keys.breakers_open(), {origin: time.time() + 600})
        with SyncRedis.from_url(service_urls.redis_url) as sync:
            metrics.inc_sync(sync, metrics.QUARANTINES, {"cause": "schedule"}, 3)
        open_before = await redis.zcount(keys.breakers_open(), time.time(), "+inf")
        after = await scrape()
        open_after = await redis.zcount(keys.breakers_open(), time.time(), "+inf")
        await redis.zrem(keys.breakers_open(), origin)
    finally:
        await redis.aclose()

    assert journaled == dict(zip(line[::2], line[1::2], strict=True))
    attempts = "pollinator_delivery_attempts_total"
    assert delta(attempts, outcome="delivered") == 2
    assert delta(attempts, outcome="retry_timeout") == 1
    assert delta("pollinator_quarantines_total", cause="schedule") == 3
    latency = "pollinator_delivery_duration_seconds"
    assert delta(latency + "_bucket", le="0.25") == 0
    assert delta(latency + "_bucket", le="0.5") == 1  # cumulative: 0.3 from here on
    assert delta(latency + "_bucket", le="5.0") == 1
    assert delta(latency + "_bucket", le="10.0") == 2
    assert delta(latency + "_bucket", le="+Inf") == 2
    assert delta(latency + "_count") == 2
    assert delta(latency + "_sum") == pytest.approx(7.3)
    # Other tests' breakers may close meanwhile: the gauge is the count at scrape time.
    assert open_before >= 1
    assert after[("pollinator_breakers_open", frozenset())] in {open_before, open_after}
    # The backlog gauges are read from PostgreSQL at every scrape.
    for gauge in ("pollinator_deliveries_pending", "pollinator_instances_polling"):
        assert (gauge, frozenset()) in after
