"""The Grafana dashboard and the Prometheus alert rules under deploy/ name only real metrics.

Each metric name they use must be a family the API's ``/metrics`` declares (``# TYPE``)
on a live app, histogram and counter suffixes included: a renamed metric would otherwise
leave a dashboard blank and an alert that can never fire.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from aiohttp.test_utils import TestClient

from tests.conftest import ROOT

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
