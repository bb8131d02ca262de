"""Phases 1 and 2: the stack (started, or given with ``--api-url``), then N instances.

Each instance gets its own simulator account and a real OAuth code, through the public
API exactly as a platform team creates one; one OAuth app per ``--instances-per-app``
instances, because the poller enforces a per-app request budget as Keap does.
"""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from app.client import InstanceSpec, OAuthApp, authorization
from app.loadtest.context import Context, Instance, LoadTestError, bounded
from app.loadtest.monitor import (
    JournalReader,
    ReceiverTail,
    Sampler,
    find_embedded_postgres,
    find_redis,
)
from app.loadtest.stack import Stack, StackOptions

OAUTH_CALLBACK = "https://loadtest.invalid/oauth/callback"
SIGNATURE_KEY = "loadtest-signature-key"
CREATE_ATTEMPTS = 4


def oauth_app(inst: Instance) -> OAuthApp:
    return OAuthApp(inst.client_id, inst.client_secret, OAUTH_CALLBACK)


# --- phase 1: stack ------------------------------------------------------------------------


def start_stack(ctx: Context) -> None:
    """Services, a fresh database, simulator, receiver, API, beat, workers; an organization."""
    opts = ctx.opts
    env = dict(opts.env)
    if opts.provider_timeout_s is not None:
        env.setdefault("POLLINATOR_PROVIDER_TIMEOUT_SECONDS", f"{opts.provider_timeout_s:g}")
    ctx.stack = stack = Stack(
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
    ctx.set_phase("services")
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
    ctx.set_phase("starting processes")
    stack.wait_ready()
    ctx.sim_url, ctx.api_url = stack.sim_url, stack.api_url
    org = create_org(stack.env)
    ctx.auth = authorization(org["userSecret"], org["organizationSecret"])
    start_monitoring(ctx, stack.redis_url, stack.receiver_log)


def start_external(ctx: Context) -> None:
    """``--api-url``: the stack and the simulator are given; only the receiver is ours."""
    opts = ctx.opts
    if not (opts.sim_url and opts.auth):
        raise LoadTestError("--api-url needs --sim-url and --auth")
    ctx.stack = Stack(StackOptions(opts.out, opts.data_dir, None, None, 0.0, 1.0))
    ctx.stack.start_receiver()
    ctx.stack.wait_ready()
    start_monitoring(ctx, opts.redis_url, ctx.stack.receiver_log)


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


def start_monitoring(ctx: Context, redis_url: str | None, receiver_log: Path) -> None:
    """The poll journal, the receiver's log and a CPU/RSS sampler of every process."""
    if redis_url:
        ctx.state.journal = JournalReader(redis_url)
    ctx.state.receiver = ReceiverTail(receiver_log, ctx.account_of_path)
    roles: dict[str, Callable[[], int | None]] = {}
    stack = ctx.stack
    if stack is not None:
        for name in stack.procs:
            roles[name] = functools.partial(stack.pid_of, name)
        if stack.embedded_pgdata is not None:
            pg = find_embedded_postgres(stack.embedded_pgdata)
            if pg is not None:
                roles["postgres"] = lambda: pg
        redis_pid = (
            find_redis(stack.redis_url) if ctx.opts.managed and not ctx.opts.redis_url else None
        )
        if redis_pid is not None:
            roles["redis"] = lambda: redis_pid
    ctx.sampler = Sampler(roles)
    ctx.sampler.start()


# --- phase 2: instances --------------------------------------------------------------------


async def create_instances(ctx: Context) -> None:
    ctx.set_phase("creating instances")
    per_app = max(1, ctx.opts.instances_per_app)
    for i in range(ctx.opts.instances):
        k = i // per_app
        inst = Instance(i, f"lt-{i}", f"lt-app-{k}", f"lt-secret-{k}")
        ctx.instances.append(inst)
        ctx.by_account[inst.account] = inst
    started = time.time()
    await bounded(
        ctx.instances, ctx.opts.create_concurrency, functools.partial(create_instance, ctx)
    )
    ctx.extra["create_s"] = round(time.time() - started, 3)


async def create_instance(ctx: Context, inst: Instance) -> None:
    """Consent and create; a 5xx or a broken connection is retried with a fresh code."""
    spec = InstanceSpec(
        app=oauth_app(inst),
        callback_url=f"{ctx.receiver_url}/cb/{inst.account}",
        name=f"loadtest {inst.account}",
        tags=["loadtest"],
        refresh_minutes=ctx.opts.refresh_minutes,
        signature_key=SIGNATURE_KEY,
        poller=ctx.poller_configuration(),
    )
    last = ""
    for _attempt in range(CREATE_ATTEMPTS):
        code = await ctx.simulator.authorize(spec.app, inst.account)
        try:
            status, data = await ctx.pollinator.request("POST", "/instances", spec.body(code))
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(1)
            continue
        if status == 200 and isinstance(data, dict):
            inst.instance_id = int(data["id"])
            ctx.state.created += 1
            return
        last = f"{status} {data}"
        if status < 500:
            break
        await asyncio.sleep(1)
    raise LoadTestError(f"creating the instance of {inst.account} failed: {last}")
