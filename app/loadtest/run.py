"""The phases of one load test.

1. **stack** — services, a fresh database, simulator, receiver, API, beat, workers
   (or an existing stack with ``--api-url``).
2. **create** — N instances through the public API, each with its own simulator account
   and a real OAuth code (one OAuth app per ``--instances-per-app`` instances, because
   the poller enforces a per-app request budget as Keap does).
3. **run** — the simulator's mutator makes ``--changes-per-second`` random changes across
   the accounts for ``--duration`` seconds (optionally with injected faults).
4. **drain** — changes stop; wait until every change is covered by a delivered event, or
   the drain timeout.
5. **burst** — every instance is made due at once (one UPDATE when the tool owns the stack,
   else ``POST .../polling/run`` per instance); capacity is
   polls completed ÷ seconds until the last finished, from the poll journal.
6. **ceiling** — with the stack stopped, a bare aiohttp loop (own process) fetches the same
   page URLs from the same simulator: the page-fetch rate nothing could beat.
7. **report** — results.json, latency.png, the table.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import asyncpg

from app.domain.pollconfig import DEFAULT_POLLER_CONFIGURATION, parse_poller_configuration
from app.loadtest import analysis, report
from app.loadtest.analysis import Change
from app.loadtest.monitor import (
    JournalReader,
    ReceiverTail,
    Sampler,
    find_embedded_postgres,
    find_redis,
)
from app.loadtest.progress import Progress
from app.loadtest.stack import Stack, StackOptions
from app.providers.infusionsoft import page_url

T = TypeVar("T")

OAUTH_CALLBACK = "https://loadtest.invalid/oauth/callback"
SIGNATURE_KEY = "loadtest-signature-key"
LIVE_MISSED_SAMPLE = 25
POLLINATOR_PREFIXES = ("api", "beat", "worker-")


class LoadTestError(RuntimeError):
    """The run could not go on; the message says why."""


@dataclass
class Options:
    instances: int
    refresh_minutes: float
    duration: float
    resources: list[str]
    changes_per_second: float
    provider_latency_ms: float
    out: Path
    api_url: str | None = None
    sim_url: str | None = None
    auth: str | None = None
    database_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = Path(".data/loadtest")
    instances_per_app: int = 100
    create_concurrency: int = 50
    poll_workers: int = 1
    delivery_workers: int = 1
    faults: bool = False
    fault_rate: float = 0.05
    provider_timeout_s: float | None = None
    drain_timeout_s: float | None = None
    burst_timeout_s: float | None = None
    ceiling_seconds: float = 15.0
    records_per_account: int = 10
    env: dict[str, str] = field(default_factory=dict)
    keep_database: bool = False
    progress_interval: float | None = None

    @property
    def managed(self) -> bool:
        """Whether this run starts (and owns) the stack."""
        return self.api_url is None


@dataclass
class Instance:
    index: int
    account: str
    client_id: str
    client_secret: str
    instance_id: int = 0


@dataclass
class RunState:
    """Everything measured so far; the progress line reads it."""

    phase: str = "starting"
    created: int = 0
    t_start: float = 0.0  # the changes started
    t_end: float = 0.0  # the changes stopped
    journal: JournalReader | None = None
    receiver: ReceiverTail | None = None
    live_missed: int | None = None


class LoadTest:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.state = RunState()
        self.stack: Stack | None = None
        self.sampler: Sampler | None = None
        self.instances: list[Instance] = []
        self.by_account: dict[str, Instance] = {}
        self.sim_url = opts.sim_url or ""
        self.api_url = opts.api_url or ""
        self.auth = opts.auth or ""
        self.session: aiohttp.ClientSession | None = None
        self.changes: list[Change] = []
        self.marks: dict[str, float] = {}
        self.extra: dict[str, Any] = {}
        self.progress: Progress | None = None

    # --- helpers -----------------------------------------------------------------------------

    def set_phase(self, phase: str) -> None:
        self.state.phase = phase
        message = f"loadtest: {phase}"
        if self.progress is not None:
            self.progress.say(message)
        else:
            print(message, file=sys.stderr, flush=True)

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self.session is not None
        return self.session

    async def sim(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, self.sim_url + path, json=body) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 300:
                raise LoadTestError(f"simulator {method} {path}: {resp.status} {data}")
            return data

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        url = f"{self.api_url}/elements/api-v2{path}"
        headers = {"Authorization": self.auth}
        async with self.http.request(method, url, json=body, headers=headers) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text) if text else None
            except ValueError:
                return resp.status, text

    @staticmethod
    async def bounded(
        items: list[T], concurrency: int, work: Callable[[T], Awaitable[None]]
    ) -> None:
        queue: asyncio.Queue[T] = asyncio.Queue()
        for item in items:
            queue.put_nowait(item)

        async def worker() -> None:
            while not queue.empty():
                await work(queue.get_nowait())

        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(items))))))

    def account_of_path(self, path: str) -> str | None:
        account = path.rsplit("/", 1)[-1]
        return account if account in self.by_account else None

    def poller_configuration(self) -> dict[str, Any]:
        return {r: DEFAULT_POLLER_CONFIGURATION[r] for r in self.opts.resources}

    # --- phase 1: stack ----------------------------------------------------------------------

    def start_stack(self) -> None:
        opts = self.opts
        env = dict(opts.env)
        if opts.provider_timeout_s is not None:
            env.setdefault("POLLINATOR_PROVIDER_TIMEOUT_SECONDS", f"{opts.provider_timeout_s:g}")
        self.stack = Stack(
            StackOptions(
                out_dir=opts.out,
                data_dir=opts.data_dir,
                database_url=opts.database_url,
                redis_url=opts.redis_url,
                provider_latency_ms=opts.provider_latency_ms,
                min_refresh_minutes=min(opts.refresh_minutes, 1.0),
                poll_workers=opts.poll_workers,
                delivery_workers=opts.delivery_workers,
                env=env,
                keep_database=opts.keep_database,
            )
        )
        stack = self.stack
        self.set_phase("services")
        stack.start_services()
        stack.start_simulator(
            [
                "--records-per-account",
                str(opts.records_per_account),
                "--seed-resources",
                ",".join(opts.resources),
            ]
        )
        stack.start_receiver()
        stack.start_pollinator(secrets.token_urlsafe(48))
        self.set_phase("starting processes")
        stack.wait_ready()
        self.sim_url, self.api_url = stack.sim_url, stack.api_url
        org = self.create_org(stack.env)
        self.auth = f"User {org['userSecret']}, Organization {org['organizationSecret']}"

    @staticmethod
    def create_org(env: dict[str, str]) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-m", "app.cli", "org", "create", "loadtest"],
            env=env,
            capture_output=True,
            check=False,
            timeout=120,
        )
        if out.returncode != 0:
            raise LoadTestError(f"org create failed: {out.stderr.decode(errors='replace')}")
        data: dict[str, Any] = json.loads(out.stdout)
        return data

    def start_monitoring(self, redis_url: str | None, receiver_log: Path) -> None:
        if redis_url:
            self.state.journal = JournalReader(redis_url)
        self.state.receiver = ReceiverTail(receiver_log, self.account_of_path)
        roles: dict[str, Callable[[], int | None]] = {}
        stack = self.stack
        if stack is not None:
            for name in stack.procs:
                roles[name] = functools.partial(stack.pid_of, name)
            if stack.embedded_pgdata is not None:
                pg = find_embedded_postgres(stack.embedded_pgdata)
                if pg is not None:
                    roles["postgres"] = lambda: pg
            redis_pid = (
                find_redis(stack.redis_url)
                if self.opts.managed and not self.opts.redis_url
                else None
            )
            if redis_pid is not None:
                roles["redis"] = lambda: redis_pid
        self.sampler = Sampler(roles)
        self.sampler.start()

    # --- phase 2: instances ------------------------------------------------------------------

    async def authorize(self, inst: Instance) -> str:
        query = urlencode(
            {
                "client_id": inst.client_id,
                "redirect_uri": OAUTH_CALLBACK,
                "response_type": "code",
                "scope": "full",
                "state": inst.account,
                "account": inst.account,
            }
        )
        url = f"{self.sim_url}/app/oauth/authorize?{query}"
        async with self.http.get(url, allow_redirects=False) as resp:
            location = resp.headers.get("Location")
            if resp.status != 302 or not location:
                raise LoadTestError(f"authorize {inst.account}: {resp.status}")
        return parse_qs(urlsplit(location).query)["code"][0]

    async def create_instance(self, inst: Instance) -> None:
        last = ""
        for _attempt in range(4):
            code = await self.authorize(inst)
            body = {
                "element": {"key": "infusionsoftrest"},
                "providerData": {"code": code},
                "name": f"loadtest {inst.account}",
                "tags": ["loadtest"],
                "configuration": {
                    "oauth.api.key": inst.client_id,
                    "oauth.api.secret": inst.client_secret,
                    "oauth.callback.url": OAUTH_CALLBACK,
                    "event.notification.enabled": True,
                    "event.vendor.type": "polling",
                    "event.notification.callback.url": f"{self.receiver_url}/cb/{inst.account}",
                    "event.notification.signature.key": SIGNATURE_KEY,
                    "event.poller.refresh_interval": self.opts.refresh_minutes,
                    "event.poller.configuration": self.poller_configuration(),
                },
            }
            try:
                status, data = await self.api("POST", "/instances", body)
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(1)
                continue
            if status == 200 and isinstance(data, dict):
                inst.instance_id = int(data["id"])
                self.state.created += 1
                return
            last = f"{status} {data}"
            if status < 500:
                break
            await asyncio.sleep(1)
        raise LoadTestError(f"creating the instance of {inst.account} failed: {last}")

    @property
    def receiver_url(self) -> str:
        assert self.stack is not None
        return self.stack.receiver_url

    async def create_instances(self) -> None:
        self.set_phase("creating instances")
        per_app = max(1, self.opts.instances_per_app)
        for i in range(self.opts.instances):
            k = i // per_app
            inst = Instance(i, f"lt-{i}", f"lt-app-{k}", f"lt-secret-{k}")
            self.instances.append(inst)
            self.by_account[inst.account] = inst
        started = time.time()
        await self.bounded(self.instances, self.opts.create_concurrency, self.create_instance)
        self.extra["create_s"] = round(time.time() - started, 3)

    # --- phase 3: changes --------------------------------------------------------------------

    async def run_changes(self) -> None:
        opts = self.opts
        self.set_phase("run")
        if opts.faults:
            await self.inject_faults(opts.duration)
        self.state.t_start = time.time()
        self.marks["changes start"] = self.state.t_start
        await self.sim(
            "POST",
            "/_sim/mutator",
            {
                "changesPerSecond": opts.changes_per_second,
                "resources": opts.resources,
                "createRatio": 0.3,
                "accounts": [i.account for i in self.instances],
            },
        )
        deadline = self.state.t_start + opts.duration
        next_live = time.time() + 10
        while (now := time.time()) < deadline:
            await asyncio.sleep(min(1.0, deadline - now))
            self.tick()
            if time.time() >= next_live:
                next_live = time.time() + 10
                await self.estimate_missed()
        await self.sim("POST", "/_sim/mutator", {"changesPerSecond": 0})
        self.state.t_end = time.time()
        self.marks["changes stop"] = self.state.t_end
        if opts.faults:
            await self.sim("DELETE", "/_sim/faults")

    async def inject_faults(self, seconds: float) -> None:
        timeout_s = self.opts.provider_timeout_s or 5.0
        rate = self.opts.fault_rate
        for body in (
            {"kind": "error500", "probability": rate},
            {"kind": "timeout", "probability": rate, "delaySeconds": timeout_s + 3},
            {"kind": "throttle", "probability": rate},
        ):
            await self.sim("POST", "/_sim/faults", {**body, "seconds": seconds})

    def tick(self) -> None:
        """Read what the journal and the receiver added; check no child died."""
        if self.state.journal is not None:
            self.state.journal.poll()
        if self.state.receiver is not None:
            self.state.receiver.poll()
        if self.stack is not None and (dead := self.stack.died()):
            name = dead[0]
            tail = self.stack.log(name)[-1500:]
            raise LoadTestError(f"{name} exited during the run; its log ends with:\n{tail}")

    async def account_changes(self, account: str) -> list[Change]:
        raw = await self.sim("GET", f"/_sim/accounts/{account}/changes")
        items = raw if isinstance(raw, list) else raw.get("changes", [])
        return [
            c
            for c in (analysis.parse_change(account, item) for item in items)
            if c.at >= self.state.t_start
        ]

    async def estimate_missed(self) -> None:
        """Missed so far, extrapolated from a fixed sample of accounts (cheap, approximate)."""
        if self.state.receiver is None or not self.instances:
            return
        step = max(1, len(self.instances) // LIVE_MISSED_SAMPLE)
        sample = [i.account for i in self.instances[::step][:LIVE_MISSED_SAMPLE]]
        changes: list[Change] = []
        for account in sample:
            changes += await self.account_changes(account)
        wanted = set(sample)
        events = [e for e in self.state.receiver.events if e.account in wanted]
        overdue = time.time() - (2 * self.opts.refresh_minutes * 60 + 15)
        result = analysis.analyze_delivery(changes, events, overdue_before=overdue)
        self.state.live_missed = round(result.missed * len(self.instances) / len(sample))

    # --- phase 4: drain ----------------------------------------------------------------------

    async def drain(self) -> analysis.DeliveryAnalysis:
        self.set_phase("drain")
        await asyncio.sleep(0.5)
        collected: list[Change] = []

        async def fetch(inst: Instance) -> None:
            collected.extend(await self.account_changes(inst.account))

        await self.bounded(self.instances, 32, fetch)
        self.changes = sorted(collected, key=lambda c: c.at)
        timeout = self.opts.drain_timeout_s
        if timeout is None:
            timeout = 2 * self.opts.refresh_minutes * 60 + 30 + (60 if self.opts.faults else 0)
        started = time.time()
        deadline = started + timeout
        while True:
            self.tick()
            assert self.state.receiver is not None
            result = analysis.analyze_delivery(self.changes, self.state.receiver.events)
            self.state.live_missed = result.missed
            if result.missed == 0 or time.time() > deadline:
                break
            await asyncio.sleep(1.0)
        self.extra["drain_s"] = round(time.time() - started, 3)
        self.extra["drained"] = result.missed == 0
        return result

    # --- phase 5: burst ----------------------------------------------------------------------

    @staticmethod
    async def _all_due(database_url: str, ids: list[int]) -> None:
        from app.db import libpq_url

        conn = await asyncpg.connect(libpq_url(database_url))
        try:
            await conn.execute(
                "UPDATE instances SET next_poll_at = now() WHERE id = ANY($1::bigint[])", ids
            )
        finally:
            await conn.close()

    async def burst(self) -> tuple[analysis.BurstResult, float | None]:
        """Every instance due at once. Returns the burst and the simulator's page rate."""
        self.set_phase("burst")
        journal = self.state.journal
        if journal is None:
            return analysis.BurstResult(len(self.instances), 0, None, None, 0), None
        journal.poll()
        stats0 = await self.sim("GET", "/_sim/stats")
        ids = {i.instance_id for i in self.instances}
        by_id = {i.instance_id: i for i in self.instances}
        start = time.time()

        async def trigger(inst: Instance) -> None:
            for _ in range(3):
                try:
                    status, _data = await self.api(
                        "POST", f"/instances/{inst.instance_id}/polling/run"
                    )
                except (aiohttp.ClientError, TimeoutError):
                    continue
                if status == 202:
                    return

        if self.stack is not None and self.stack.database_url:
            # We own the stack: make every instance due in one statement, so the burst
            # measures the pollers rather than how fast the API takes 'poll now' calls.
            await self._all_due(self.stack.database_url, sorted(ids))
            self.extra["burst_trigger"] = "database"
        else:
            await self.bounded(self.instances, 100, trigger)
            self.extra["burst_trigger"] = "api"
        self.extra["burst_trigger_s"] = round(time.time() - start, 3)
        timeout = self.opts.burst_timeout_s or max(60.0, len(ids) / 10)
        deadline = start + timeout
        last_progress, last_done, retriggered = time.time(), -1, 0
        while True:
            self.tick()
            result = analysis.burst_capacity(journal.entries, ids, start)
            if result.completed >= len(ids) or time.time() > deadline:
                break
            if result.completed != last_done:
                last_done, last_progress = result.completed, time.time()
            elif time.time() - last_progress > 10 and retriggered < 3:
                # a poll that collided with a regular one is skipped (no journal line)
                done = {e.instance for e in journal.entries if e.started >= start}
                await self.bounded([by_id[i] for i in ids - done], 100, trigger)
                retriggered += 1
                last_progress = time.time()
            await asyncio.sleep(0.25)
        stats1 = await self.sim("GET", "/_sim/stats")
        sim_requests = int(stats1["rest"]["requests"]) - int(stats0["rest"]["requests"])
        self.extra["burst_retriggered"] = retriggered
        self.extra["burst_sim_requests"] = sim_requests
        rate = result.requests / result.seconds if result.seconds else None
        return result, rate

    # --- phase 6: ceiling --------------------------------------------------------------------

    async def ceiling(self) -> dict[str, Any]:
        self.set_phase("ceiling")
        if self.stack is not None:
            self.stack.stop_pollinator()  # the stack idle: the simulator is the only server left
        step = max(1, len(self.instances) // 500)
        sample = self.instances[::step][:500]
        tokens: dict[str, str] = {}

        async def token(inst: Instance) -> None:
            code = await self.authorize(inst)
            form = {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": OAUTH_CALLBACK,
                "client_id": inst.client_id,
                "client_secret": inst.client_secret,
            }
            async with self.http.post(f"{self.sim_url}/token", data=form) as resp:
                tokens[inst.account] = str((await resp.json())["access_token"])

        await self.bounded(sample, 32, token)
        configs = parse_poller_configuration(self.poller_configuration())
        since = datetime.fromtimestamp(self.state.t_end, UTC)
        base = f"{self.sim_url}/crm/rest/v1"
        targets = [
            [str(page_url(base, cfg.url.render(since, UTC), cfg.page_size or 1000, 0)), tokens[a]]
            for a in tokens
            for cfg in configs.values()
        ]
        # enough in flight to hide the provider latency at ~10k pages/s, and less in case
        # that many only adds contention
        levels = [16, 64, 256, 1024]
        per_level = max(1.0, self.opts.ceiling_seconds / len(levels))
        spec = {"targets": targets, "levels": levels, "seconds": per_level}
        spec_path = self.opts.out / "ceiling-spec.json"
        spec_path.write_text(json.dumps(spec))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.loadtest.ceiling",
            str(spec_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), per_level * len(levels) + 60)
        spec_path.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise LoadTestError(f"ceiling loop failed: {err.decode(errors='replace')[-1500:]}")
        data: dict[str, Any] = json.loads(out)
        return data

    # --- phase 7: report ---------------------------------------------------------------------

    def results(
        self,
        delivery: analysis.DeliveryAnalysis,
        burst: analysis.BurstResult,
        burst_rate: float | None,
        ceiling: dict[str, Any],
    ) -> dict[str, Any]:
        st = self.state
        ids = {i.instance_id for i in self.instances}
        entries = st.journal.entries if st.journal else []
        steady = analysis.journal_stats(entries, st.t_start, st.t_end, ids)
        raw = float(ceiling.get("best_per_s") or 0.0) or None
        procs = self.process_stats(st.t_start, st.t_end)
        polly = {k: v for k, v in procs.items() if k.startswith(POLLINATOR_PREFIXES)}
        total = self.total_series(st.t_start, st.t_end)
        budget = self.app_budget_per_s()
        results: dict[str, Any] = {
            "instances": len(ids),
            "duration_s": self.opts.duration,
            "polls": steady.polls,
            "polls_per_s": _r(steady.polls_per_s),
            "capacity_polls_per_s": _r(burst.capacity_polls_per_s),
            "schedule_lag_p50_s": _r(steady.lag_p50),
            "schedule_lag_p99_s": _r(steady.lag_p99),
            "schedule_lag_max_s": _r(steady.lag_max),
            "changes": delivery.changes,
            "events_delivered": delivery.events_delivered,
            "missed": delivery.missed,
            "duplicates": delivery.duplicates,
            "e2e_latency_p50_s": _r(delivery.latency_p50),
            "e2e_latency_p99_s": _r(delivery.latency_p99),
            "raw_fetch_per_s": _r(raw),
            "poll_efficiency": _r(burst_rate / raw if burst_rate and raw else None),
            "cpu_percent": _r(sum(p["cpu_percent"] or 0.0 for p in polly.values())),
            "rss_mb": _r(total[-1] if total else None),
            "peak_rss_mb": _r(max(total) if total else None),
            # --- beyond the spec's keys ---
            "processes": procs,
            "polls_failed": steady.failed,
            "provider_requests": steady.requests,
            "delivery": {
                "e2e_latency_max_s": _r(delivery.latency_max),
                "unconfirmed": delivery.unconfirmed,
                "type_mismatch": delivery.type_mismatch,
                "duplicate_deliveries": delivery.duplicate_deliveries,
                "drain_s": self.extra.get("drain_s"),
                "drained": self.extra.get("drained"),
                "missed_examples": [
                    {
                        "account": c.account,
                        "op": c.op,
                        "resource": c.resource,
                        "id": c.object_id,
                        "at": _iso(c.at),
                    }
                    for c in delivery.missed_changes[:20]
                ],  # fmt: skip
            },
            "burst": {
                "instances": burst.instances,
                "completed": burst.completed,
                "seconds": _r(burst.seconds),
                "trigger_s": self.extra.get("burst_trigger_s"),
                "journal_requests": burst.requests,
                "simulator_requests": self.extra.get("burst_sim_requests"),
                "page_fetch_per_s": _r(burst_rate),
                "poll_duration_p50_s": _r(burst.duration_p50),
                "poll_duration_p99_s": _r(burst.duration_p99),
                "mean_polls_in_flight": _r(burst.mean_in_flight),
                "retriggered": self.extra.get("burst_retriggered"),
                "app_budget_per_s": budget,
                "bound_by_app_budget": bool(budget and burst_rate and burst_rate >= 0.9 * budget),
            },
            "ceiling": ceiling,
            "config": {
                "refresh_minutes": self.opts.refresh_minutes,
                "resources": self.opts.resources,
                "changes_per_second": self.opts.changes_per_second,
                "provider_latency_ms": self.opts.provider_latency_ms,
                "instances_per_app": self.opts.instances_per_app,
                "poll_workers": self.opts.poll_workers,
                "delivery_workers": self.opts.delivery_workers,
                "faults": self.opts.faults,
                "fault_rate": self.opts.fault_rate if self.opts.faults else 0.0,
                "create_s": self.extra.get("create_s"),
                "cpu_note": "cpu_percent: mean over the run of API+beat+workers (100 = one "
                "core); rss_mb: their summed RSS at the end of the run; peak_rss_mb: the "
                "largest summed RSS sampled",
            },
        }
        self.write_outputs(results, steady.lags, delivery.latencies)
        return results

    def app_budget_per_s(self) -> float | None:
        """Provider requests/s the per-OAuth-app budget allows all instances together.

        The burst cannot fetch faster than this (Keap's per-app limit, enforced by the
        poller), so a burst at the budget measures the budget, not the engine.
        """
        from app.settings import Settings

        default = Settings.model_fields["provider_app_rate_per_second"].default
        raw = self.opts.env.get("POLLINATOR_PROVIDER_APP_RATE_PER_SECOND", default)
        rate = float(raw)
        if rate <= 0:
            return None
        apps = math.ceil(len(self.instances) / max(1, self.opts.instances_per_app))
        return apps * rate

    def process_stats(self, start: float, end: float) -> dict[str, dict[str, float | None]]:
        samples = [s for s in (self.sampler.samples if self.sampler else []) if start <= s.t <= end]
        names = sorted({n for s in samples for n in s.cpu})
        stats: dict[str, dict[str, float | None]] = {}
        for name in names:
            cpus = [s.cpu[name] for s in samples if name in s.cpu]
            rss = [s.rss_mb[name] for s in samples if name in s.rss_mb]
            stats[name] = {
                "cpu_percent": _r(sum(cpus) / len(cpus)) if cpus else None,
                "rss_mb": _r(rss[-1]) if rss else None,
                "peak_rss_mb": _r(max(rss)) if rss else None,
            }
        return stats

    def total_series(self, start: float, end: float) -> list[float]:
        """Summed RSS of the Pollinator processes per sample."""
        samples = [s for s in (self.sampler.samples if self.sampler else []) if start <= s.t <= end]
        return [
            sum(v for k, v in s.rss_mb.items() if k.startswith(POLLINATOR_PREFIXES))
            for s in samples
        ]

    def write_outputs(
        self,
        results: dict[str, Any],
        lags: list[tuple[float, float]],
        latencies: list[tuple[float, float]],
    ) -> None:
        out = self.opts.out
        report.write_json(out / "results.json", results)
        title = (
            f"{results['instances']} instances, refresh {self.opts.refresh_minutes:g} min, "
            f"{self.opts.duration:g} s, {self.opts.changes_per_second:g} changes/s, "
            f"provider latency {self.opts.provider_latency_ms:g} ms"
        )
        report.plot_latency(out / "latency.png", lags, latencies, self.state.t_start, title,
                            self.marks)  # fmt: skip

    # --- the whole run -----------------------------------------------------------------------

    async def run(self, progress: Progress) -> dict[str, Any]:
        opts = self.opts
        self.progress = progress
        opts.out.mkdir(parents=True, exist_ok=True)
        if opts.managed:
            await asyncio.to_thread(self.start_stack)
            assert self.stack is not None
            self.start_monitoring(self.stack.redis_url, self.stack.receiver_log)
        else:
            await asyncio.to_thread(self.start_external)
        connector = aiohttp.TCPConnector(limit=256)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self.session = session
            progress.start(self.progress_line)
            try:
                await self.create_instances()
                await self.run_changes()
                delivery = await self.drain()
                burst, burst_rate = await self.burst()
                ceiling = await self.ceiling()
            finally:
                await progress.stop()
            self.set_phase("report")
            if self.sampler is not None:
                self.sampler.stop()
            return self.results(delivery, burst, burst_rate, ceiling)

    def start_external(self) -> None:
        """``--api-url``: the stack and the simulator are given; only the receiver is ours."""
        if not (self.opts.sim_url and self.opts.auth):
            raise LoadTestError("--api-url needs --sim-url and --auth")
        self.stack = Stack(StackOptions(self.opts.out, self.opts.data_dir, None, None, 0.0, 1.0))
        self.stack.start_receiver()
        self.stack.wait_ready()
        self.start_monitoring(self.opts.redis_url, self.stack.receiver_log)

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()
        if self.state.journal is not None:
            self.state.journal.close()
        if self.stack is not None:
            self.stack.close()

    def progress_line(self) -> str:
        st = self.state
        now = time.time()
        parts = [f"[{st.phase}"]
        if st.phase == "run" and st.t_start:
            parts[0] += f" {now - st.t_start:.0f}/{self.opts.duration:g}s"
        parts[0] += "]"
        parts.append(f"instances {st.created}/{self.opts.instances}")
        if st.journal is not None and st.t_start:
            recent = [e for e in st.journal.entries[-20000:] if e.finished >= now - 10]
            parts.append(f"polls/s {len(recent) / 10:.1f}")
            window = [
                max(e.started - e.scheduled, 0.0)
                for e in st.journal.entries[-50000:]
                if e.scheduled and e.started >= st.t_start
            ]
            p99 = analysis.percentile(window, 99)
            parts.append(f"lag p99 {p99:.2f}s" if p99 is not None else "lag p99 -")
        if st.receiver is not None:
            parts.append(f"events {len(st.receiver.events)}")
        if st.live_missed is not None:
            approx = "~" if st.phase == "run" else ""
            parts.append(f"missed {approx}{st.live_missed}")
        return "  ".join(parts)


def _r(value: float | None, digits: int = 3) -> float | None:
    if value is None or math.isnan(value):
        return None
    return round(value, digits)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
