"""The chaos matrix: one cluster on six emulated hosts, one fault after another, nothing lost.

``make cluster-test`` runs every scenario; ``.ci/run`` a bounded subset
(``POLLINATOR_CLUSTER_SCENARIOS``). While the simulator keeps changing records,
each scenario breaks something (a host killed, a link cut, a server restarted,
the receiver down), measures how long the system takes to recover, and brings
the cluster back. At the end the changes are drained and every change the
simulator made is matched to a delivered event: per scenario window, **lost
must be 0**, and a duplicate may only ever carry an event id already delivered.
The table is printed and written to ``$POLLINATOR_CLUSTER_OUT/cluster.md``.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from app.loadtest import analysis
from tests.cluster import netns
from tests.cluster.cluster import ROOT, Cluster, Options, wait_for

pytestmark = pytest.mark.cluster

OUT = Path(os.environ.get("POLLINATOR_CLUSTER_OUT", ROOT / ".data" / "cluster"))
SETTLE_S = 5.0
POLL_SLACK_S = 15.0  # how long one poll may take after it starts (provider latency, pages)
# SIGTERM → exit: the worker finishes its in-flight polls first (deploy/'s grace period).
WORKER_GRACE_S = 60.0


@dataclass
class Window:
    name: str
    what: str
    start: float
    end: float = 0.0
    recovery_s: float | None = None
    facts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _leading_beat(c: Cluster) -> str:
    """The beat whose log said "scheduled" most recently."""
    latest: dict[str, float] = {}
    for name in ("beat-ctl", "beat-standby"):
        path = c.log(name)
        latest[name] = path.stat().st_mtime if "scheduled" in path.read_text() else 0.0
    return max(latest, key=lambda n: latest[n])


def _leading_lines(c: Cluster, beat: str) -> int:
    return len(re.findall(r"leading: this beat schedules", c.log(beat).read_text()))


def _burst_in_flight(c: Cluster, delay_s: float, want: int) -> set[int]:
    """Slow the provider, make every instance due, wait for many polls in flight."""
    c.fault("slow", seconds=60, delay_seconds=delay_s)
    c.all_due_now()
    best: set[int] = set()

    def enough() -> bool:
        nonlocal best
        best = max(best, c.in_flight_polls(), key=len)
        return len(best) >= want

    try:
        wait_for(enough, 30, f"{want} polls in flight", every=0.2)
    except TimeoutError:
        pass  # report what there was
    return best


def _until_all_polled(c: Cluster, what: str) -> float:
    """Seconds from now until every instance has finished a poll that ended after now."""
    everyone, since = set(c.accounts.values()), time.time()
    return wait_for(
        lambda: c.completed_after(everyone, since) == everyone,
        c.options.refresh_minutes * 60 * 3,
        what,
        every=1.0,
    )


def kill_worker_host(c: Cluster) -> Window:
    w = Window("worker host killed", "SIGKILL every process on w1 mid-burst (provider +3 s)", 0)
    in_flight = _burst_in_flight(c, 3.0, 100)
    w.start = killed = time.time()
    w.facts.append(f"{len(in_flight)} polls in flight, {c.net.kill_host('w1')} processes killed")
    c.clear_faults()
    interval = c.options.refresh_minutes * 60
    w.recovery_s = wait_for(
        lambda: c.completed_after(in_flight, killed) == in_flight,
        interval * 3,
        "the killed host's instances to be polled again",
        every=1.0,
    )
    # Polled again within one interval: the poll *starts* by then; it ends a poll later.
    if w.recovery_s > interval + POLL_SLACK_S:
        w.problems.append(f"in-flight instances polled again after {w.recovery_s:.0f} s")
    c.start_host("w1")
    c.respread()
    return w


def partition_worker_host(c: Cluster) -> Window:
    w = Window("worker host partitioned", "w2 cut from every host for 30 s, then healed", 0)
    w.start = time.time()
    c.net.partition("w2")
    time.sleep(30)
    c.net.heal("w2")
    w.recovery_s = _until_all_polled(c, "every instance polled after the heal")
    return w


def beat_failover(c: Cluster) -> Window:
    leader = _leading_beat(c)
    host = "ctl" if leader == "beat-ctl" else "standby"
    other = "beat-standby" if leader == "beat-ctl" else "beat-ctl"
    w = Window("leading beat's host killed", f"SIGKILL {host} (the leader {leader})", 0)
    before = _leading_lines(c, other)
    w.start = time.time()
    c.net.kill_host(host)
    w.recovery_s = wait_for(
        lambda: _leading_lines(c, other) > before, 60, f"{other} to take the lead", every=0.25
    )
    c.start_host(host)
    if host == "ctl":
        wait_for(lambda: c.api("GET", "/instances?pageSize=1")[0] == 200, 60, "the API back")
    return w


def postgres_restart(c: Cluster) -> Window:
    w = Window("PostgreSQL restarted", "fast shutdown, down 5 s, started again", time.time())
    c.stop_postgres()
    time.sleep(5)
    c.start_postgres()
    w.recovery_s = _until_all_polled(c, "every instance polled after the restart")
    return w


def redis_restart_data_lost(c: Cluster) -> Window:
    w = Window(
        "Redis (and broker) lost",
        "SIGKILL Redis, delete its data (watermarks, locks, queues), start empty",
        time.time(),
    )
    c.kill_redis_and_lose_its_data()
    time.sleep(3)
    c.start_redis()
    w.recovery_s = _until_all_polled(c, "every instance polled after Redis came back empty")
    return w


def receiver_down(c: Cluster) -> Window:
    w = Window(
        "callback receiver down",
        "receiver stopped 60 s (retry schedule compressed 1,000x: ~3 days -> ~3 min)",
        time.time(),
    )
    c.signal_role("receiver", signal.SIGKILL)
    time.sleep(60)
    c.start_role("receiver")
    back = time.time()

    def none_pending() -> bool:
        [(pending,)] = c.sql("SELECT count(*) FROM deliveries WHERE status = 'pending'")
        return int(pending) == 0

    w.recovery_s = wait_for(none_pending, 240, "every pending delivery to be delivered", every=1.0)
    w.facts.append(f"backlog delivered {time.time() - back:.0f} s after the receiver came back")
    return w


def sigterm_worker(c: Cluster) -> Window:
    w = Window("SIGTERM to a poll worker", "poll-w1 told to stop mid-burst (provider +2 s)", 0)
    in_flight = _burst_in_flight(c, 2.0, 50)
    w.start = time.time()
    c.signal_role("poll-w1", signal.SIGTERM)
    proc = c.procs["poll-w1"]
    exited = wait_for(lambda: proc.poll() is not None, WORKER_GRACE_S + 30, "poll-w1 to exit")
    w.facts.append(f"{len(in_flight)} polls in flight; exited {exited:.1f} s after SIGTERM")
    if exited > WORKER_GRACE_S:
        w.problems.append(f"drain took {exited:.0f} s > grace {WORKER_GRACE_S:.0f} s")
    c.clear_faults()
    w.recovery_s = exited
    c.start_role("poll-w1")
    c.respread()
    return w


SCENARIOS: dict[str, Callable[[Cluster], Window]] = {
    "kill-worker-host": kill_worker_host,
    "partition-worker-host": partition_worker_host,
    "beat-failover": beat_failover,
    "postgres-restart": postgres_restart,
    "redis-restart": redis_restart_data_lost,
    "receiver-down": receiver_down,
    "sigterm-worker": sigterm_worker,
}


def _selected() -> list[str]:
    raw = os.environ.get("POLLINATOR_CLUSTER_SCENARIOS", "")
    names = [n.strip() for n in raw.split(",") if n.strip()] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ValueError(
            f"POLLINATOR_CLUSTER_SCENARIOS: unknown {unknown}; known {list(SCENARIOS)}"
        )
    return names


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    why = netns.available()
    if why is not None:
        pytest.skip(f"cluster test: {why}")
    options = Options(instances=int(os.environ.get("POLLINATOR_CLUSTER_INSTANCES", "300")))
    c = Cluster(OUT, options)
    try:
        c.start()
        c.create_instances()
        yield c
    finally:
        c.close()


def _table(windows: list[Window], result_of: Callable[[Window], dict[str, int]]) -> str:
    lines = [
        "| scenario | what | changes | events delivered | lost | duplicates | recovery |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for w in windows:
        r = result_of(w)
        recovery = f"{w.recovery_s:.1f} s" if w.recovery_s is not None else "-"
        lines.append(
            f"| {w.name} | {w.what} | {r['changes']} | {r['delivered']} | {r['lost']} |"
            f" {r['duplicates']} | {recovery} |"
        )
    return "\n".join(lines)


@pytest.mark.timeout(3600)
def test_chaos_matrix_loses_nothing(cluster: Cluster) -> None:
    c = cluster
    started = time.time()
    c.mutate(c.options.changes_per_second)
    time.sleep(c.options.refresh_minutes * 60 + SETTLE_S)  # every instance polled once
    windows: list[Window] = []
    for name in _selected():
        window = SCENARIOS[name](c)
        time.sleep(SETTLE_S)
        window.end = time.time()
        windows.append(window)
        if dead := [n for n in c.died() if n not in ("postgres", "redis")]:
            window.facts.append(f"exited meanwhile: {dead}")
    c.mutate(0)
    stopped = time.time()

    changes = [ch for ch in c.changes() if ch.at >= started]
    retried = 0

    def missed() -> int:
        return analysis.analyze_delivery(changes, c.received()).missed

    try:
        wait_for(lambda: missed() == 0, c.options.refresh_minutes * 60 * 2 + 200, "drain", 2.0)
    except TimeoutError:
        retried = c.retry_failed_deliveries()  # exhausted schedules are kept, never dropped
        if retried:
            wait_for(lambda: missed() == 0, 120, "drain after retrying failed deliveries", 2.0)
    drained = time.time() - stopped
    received = c.received()
    ok = [e for e in received if 200 <= e.status < 300]
    first_seen: dict[str, float] = {}
    for e in sorted(ok, key=lambda e: e.received):
        first_seen.setdefault(e.event_id, e.received)
    counts = Counter(e.event_id for e in ok)

    def result_of(w: Window) -> dict[str, int]:
        inside = [ch for ch in changes if w.start <= ch.at < w.end]
        res = analysis.analyze_delivery(inside, received)
        ids = [i for i, t in first_seen.items() if w.start <= t < w.end]
        return {
            "changes": res.changes,
            "delivered": len(ids),
            "lost": res.missed,
            "duplicates": sum(1 for i in ids if counts[i] > 1),
        }

    total = analysis.analyze_delivery(changes, received)
    slots = Counter((e.instance, e.scheduled) for e in c.polls() if e.scheduled is not None)
    double_scheduled = sum(1 for n in slots.values() if n > 1)
    table = _table(windows, result_of)
    summary = (
        f"\n{len(c.accounts)} instances, refresh {c.options.refresh_minutes:g} min, provider "
        f"{c.options.provider_latency_ms:g} ms, {c.options.changes_per_second:g} changes/s; "
        f"whole run: {total.changes} changes, {total.events_delivered} events delivered, "
        f"{total.missed} lost, {total.duplicates} duplicate event ids (same id re-delivered), "
        f"{double_scheduled} slots polled twice; drained {drained:.0f} s after the changes "
        f"stopped; {retried} failed deliveries retried by API; run {time.time() - started:.0f} s"
    )
    notes = [
        f"- {w.name}: {'; '.join(w.facts + w.problems)}" for w in windows if w.facts or w.problems
    ]
    report = "\n".join([table, summary, *notes])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "cluster.md").write_text(report + "\n")
    print("\n" + report)
    assert total.missed == 0, f"{total.missed} changes lost: {total.missed_changes[:5]}"
    assert double_scheduled == 0
    problems = [p for w in windows for p in w.problems]
    assert not problems, problems
