"""aiohttp application of the Keap simulator: OAuth, REST list endpoints, admin API.

Handlers are thin: parsing and state live in :mod:`listing`, :mod:`store`, :mod:`oauth`,
:mod:`throttle`, :mod:`faults` and :mod:`mutator`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import random
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from yarl import URL

from app.simulator.config import SimulatorConfig
from app.simulator.dates import DateParseError, iso_ms_z, now_ms, parse_iso_ms
from app.simulator.faults import Fault, FaultBook, parse_kind
from app.simulator.listing import parse_list_query, render_envelope
from app.simulator.mutator import Mutator, MutatorSettings
from app.simulator.oauth import OAuthError, OAuthState
from app.simulator.resources import RESOURCES
from app.simulator.store import QueryError, RecordNotFound, Store
from app.simulator.throttle import Decision, Throttle

__all__ = ["SIMULATOR", "Simulator", "create_app"]

log = logging.getLogger(__name__)

REST_PREFIX = "/crm/rest/v1"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(data, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _fault_body(faultstring: str, errorcode: str) -> dict[str, Any]:
    return {"fault": {"faultstring": faultstring, "detail": {"errorcode": errorcode}}}


class AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Simulator:
    """All state of one simulator instance plus its request handlers."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        rng = random.Random(config.seed) if config.seed is not None else random.Random()
        self.store = Store(seed=config.seed, skew_ms=config.clock_skew_ms)
        self.oauth = OAuthState(token_ttl=config.token_ttl, clients=config.clients)
        self.throttle = Throttle(
            config.throttle_per_second, config.throttle_per_minute, config.quota_per_day
        )
        self.faults = FaultBook(random.Random(rng.getrandbits(64)))
        self.mutator = Mutator(self.store, random.Random(rng.getrandbits(64)))
        self.stopping = asyncio.Event()
        self.started = time.monotonic()
        self.by_status: Counter[int] = Counter()
        self.rest_by_status: Counter[int] = Counter()
        self.rest_by_resource: Counter[str] = Counter()

    # --- accounts ------------------------------------------------------------------------------

    def seed(self) -> None:
        """Pre-seed ``acct-1`` .. ``acct-N`` (CLI ``--accounts``)."""
        now = now_ms()
        for i in range(1, self.config.accounts + 1):
            self.store.seed_account(
                f"acct-{i}", self.config.records_per_account, now, self.config.seed_resources
            )

    def ensure_account(self, name: str, records: int | None = None) -> bool:
        """Create (and seed) an account if new; True when it was created."""
        if name in self.store.accounts:
            return False
        n = self.config.records_per_account if records is None else records
        self.store.seed_account(name, n, now_ms(), self.config.seed_resources)
        return True

    # --- OAuth ---------------------------------------------------------------------------------

    async def authorize(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        if q.get("response_type", "code") != "code":
            return _json({"error": "unsupported_response_type"}, 400)
        account = q.get("account") or f"acct-{secrets.token_hex(5)}"
        try:
            code = self.oauth.authorize(q.get("client_id", ""), q.get("redirect_uri", ""), account)
        except OAuthError as e:
            return _json({"error": e.error, "error_description": e.description}, e.status)
        self.ensure_account(account)
        params = {"code": code}
        if "state" in q:
            params["state"] = q["state"]
        location = URL(q["redirect_uri"]).update_query(params)
        raise web.HTTPFound(location=str(location))

    async def token(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        client_id, client_secret = fields.get("client_id"), fields.get("client_secret")
        basic = _basic_auth(request.headers.get("Authorization", ""))
        if basic is not None:
            client_id, client_secret = basic
        grant = fields.get("grant_type")
        try:
            if grant == "authorization_code":
                tokens = self.oauth.exchange_code(
                    client_id, client_secret, fields.get("code"), fields.get("redirect_uri")
                )
            elif grant == "refresh_token":
                tokens = self.oauth.refresh(client_id, client_secret, fields.get("refresh_token"))
            elif not grant:
                raise OAuthError(400, "invalid_request", "grant_type is required")
            else:
                raise OAuthError(400, "unsupported_grant_type", f"Unsupported grant {grant!r}")
        except OAuthError as e:
            error = {"error": e.error, "error_description": e.description}
            return _json(error, e.status, {"Cache-Control": "no-store"})
        body: dict[str, Any] = {
            "access_token": tokens.access_token,
            "refresh_token": tokens.refresh_token,
            "expires_in": tokens.expires_in,
            "token_type": "bearer",
            "scope": "full",
        }
        return _json(body, 200, {"Cache-Control": "no-store"})

    # --- REST ----------------------------------------------------------------------------------

    def _authenticate(self, request: web.Request) -> tuple[str, str]:
        """``(client_id, account)`` of the bearer token, or raise Keap's 401."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        grant = self.oauth.lookup(token.strip()) if scheme.lower() == "bearer" else None
        if grant is None:
            body = _fault_body("Invalid Access Token", "keymanagement.service.invalid_access_token")
            raise _HTTPJson(401, body)
        if self.oauth.is_expired(grant):
            body = _fault_body("Access Token expired", "keymanagement.service.access_token_expired")
            raise _HTTPJson(401, body)
        return grant.client_id, grant.account

    def _rejected(self, decision: Decision, identity: tuple[str, str]) -> web.Response:
        headers = dict(decision.headers)
        if self.config.retry_after:
            headers["Retry-After"] = str(decision.retry_after)
        body = _fault_body(
            f"Rate limit quota violation. Quota limit  exceeded. Identifier : {identity[0]}",
            "policies.ratelimit.QuotaViolation",
        )
        return _json(body, 429, headers)

    async def rest_list(self, request: web.Request) -> web.StreamResponse:
        resource = request.match_info["resource"]
        rid_text = request.match_info.get("rid")
        if resource not in RESOURCES:
            return _json({"message": f"Resource not found: {resource}"}, 404)
        self.rest_by_resource[resource] += 1
        if self.config.latency_ms > 0:
            await asyncio.sleep(self.config.latency_ms / 1000)
        identity = self._authenticate(request)
        fault = self.faults.pick(identity[1])
        if fault is not None and fault.kind == "throttle":
            return self._rejected(self.throttle.check(identity, force_reject=True), identity)
        decision = self.throttle.check(identity)
        if not decision.allowed:
            return self._rejected(decision, identity)
        if fault is not None:
            early = await self._apply_fault(fault)
            if early is not None:
                return early
        try:
            if rid_text is not None:
                body = self._get_one(identity[1], resource, rid_text)
            else:
                body = self._list_body(request, identity[1], resource)
        except QueryError as e:
            return _json({"message": str(e)}, 400, decision.headers)
        except RecordNotFound:
            return _json({"message": f"{resource} not found"}, 404, decision.headers)
        if fault is not None and fault.kind == "malformed":
            body = body[: max(len(body) // 2, 1)]
        return web.Response(body=body, content_type="application/json", headers=decision.headers)

    def _list_body(self, request: web.Request, account: str, resource: str) -> bytes:
        params = parse_list_query(request.query, self.config.max_limit)
        page = self.store.query(
            account,
            resource,
            since=params.since,
            until=params.until,
            order=params.order,
            descending=params.descending,
            offset=params.offset,
            limit=params.limit,
        )
        base = f"{request.scheme}://{request.host}{REST_PREFIX}/{resource}/"
        return render_envelope(resource, page, params, base, request.rel_url.raw_query_string)

    def _get_one(self, account: str, resource: str, rid_text: str) -> bytes:
        try:
            rid = int(rid_text)
        except ValueError:
            raise RecordNotFound(rid_text) from None
        return json.dumps(self.store.get(account, resource, rid), separators=(",", ":")).encode()

    async def _apply_fault(self, fault: Fault) -> web.Response | None:
        if fault.kind == "error500":
            body = _fault_body("Internal Server Error", "simulator.injected_error500")
            return _json(body, 500)
        if fault.kind == "timeout":
            # Hang until the client gives up (the handler is cancelled) or the server stops.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), fault.delay_seconds)
            return _json(_fault_body("Gateway Timeout", "simulator.injected_timeout"), 504)
        if fault.kind == "slow":
            await asyncio.sleep(fault.delay_seconds)
        return None

    # --- admin ---------------------------------------------------------------------------------

    async def admin_accounts(self, request: web.Request) -> web.StreamResponse:
        return _json([self._account_summary(name) for name in self.store.account_names])

    def _account_summary(self, name: str) -> dict[str, Any]:
        acct = self.store.accounts[name]
        records = {r: len(t) for r, t in acct.tables.items() if len(t)}
        return {"account": name, "records": records, "changes": len(acct.changes)}

    async def admin_account_get(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["account"]
        if name not in self.store.accounts:
            raise AdminError(404, f"no account {name!r}")
        return _json(self._account_summary(name))

    async def admin_account_create(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["account"]
        body = await _json_body(request)
        records = body.get("records")
        resources = body.get("resources")
        if records is not None and (not isinstance(records, int) or records < 0):
            raise AdminError(400, "records must be a non-negative integer")
        if resources is not None:
            _check_resources(resources)
        # A new account gets ``records`` (default: --records-per-account) seeded records; an
        # existing one gets ``records`` more (default: none).
        created = name not in self.store.accounts
        n = (self.config.records_per_account if created else 0) if records is None else records
        self.store.seed_account(name, n, now_ms(), resources or self.config.seed_resources)
        return _json(self._account_summary(name), 201 if created else 200)

    async def admin_changes(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["account"]
        since = _admin_date(request.query.get("since"))
        try:
            changes = self.store.changes_since(name, since)
        except RecordNotFound:
            raise AdminError(404, f"no account {name!r}") from None
        return _json(
            [
                {
                    "op": c.op,
                    "resource": c.resource,
                    "id": c.rid,
                    "at": iso_ms_z(c.at_ms),
                    "recordDate": iso_ms_z(c.record_ms),
                }
                for c in changes
            ]
        )

    async def admin_create(self, request: web.Request) -> web.StreamResponse:
        name, resource = request.match_info["account"], _resource(request)
        fields = await _json_body(request)
        self.ensure_account(name, 0)
        return _json(self.store.create(name, resource, now_ms(), fields), 201)

    async def admin_record(self, request: web.Request) -> web.StreamResponse:
        name, resource = request.match_info["account"], _resource(request)
        rid = _rid(request)
        try:
            if request.method == "GET":
                return _json(self.store.get(name, resource, rid))
            if request.method == "PATCH":
                fields = await _json_body(request)
                return _json(self.store.update(name, resource, rid, now_ms(), fields))
            self.store.delete(name, resource, rid, now_ms())
            return _json({"deleted": rid, "resource": resource, "account": name})
        except RecordNotFound:
            raise AdminError(404, f"no {resource} {rid} in account {name!r}") from None

    async def admin_faults_add(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        try:
            kind = parse_kind(body.get("kind"))
        except ValueError as e:
            raise AdminError(400, str(e)) from None
        probability = _number(body, "probability", 1.0, 0.0, 1.0)
        seconds = _number(body, "seconds", 60.0, 0.0, None)
        account = body.get("account")
        if account is not None and not isinstance(account, str):
            raise AdminError(400, "account must be a string")
        if kind == "expire_tokens":
            expired = self.oauth.expire_tokens(account)
            return _json({"kind": kind, "account": account, "expired": expired})
        delay = body.get("delaySeconds")
        delay_s = None if delay is None else _number(body, "delaySeconds", 0.0, 0.0, None)
        fault = self.faults.add(kind, probability, seconds, account, delay_s)
        return _json(fault.to_json(time.monotonic()), 201)

    async def admin_faults_list(self, request: web.Request) -> web.StreamResponse:
        now = time.monotonic()
        return _json([f.to_json(now) for f in self.faults.active()])

    async def admin_faults_clear(self, request: web.Request) -> web.StreamResponse:
        self.faults.clear()
        return _json({"cleared": True})

    async def admin_mutator(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            body = await _json_body(request)
            rate = _number(body, "changesPerSecond", 0.0, 0.0, None)
            resources = body.get("resources", ["contacts"])
            _check_resources(resources)
            ratio = _number(body, "createRatio", 0.3, 0.0, 1.0)
            accounts = body.get("accounts")
            if accounts is not None and (
                not isinstance(accounts, list) or not all(isinstance(a, str) for a in accounts)
            ):
                raise AdminError(400, "accounts must be a list of account names")
            if accounts:
                for a in accounts:
                    self.ensure_account(a)
            self.mutator.configure(MutatorSettings(rate, list(resources), ratio, accounts))
        s = self.mutator.settings
        return _json(
            {
                "running": self.mutator.running,
                "changesPerSecond": s.changes_per_second,
                "resources": s.resources,
                "createRatio": s.create_ratio,
                "accounts": s.accounts,
                "applied": self.mutator.applied,
            }
        )

    async def admin_stats(self, request: web.Request) -> web.StreamResponse:
        if request.method == "DELETE":
            self.by_status.clear()
            self.rest_by_status.clear()
            self.rest_by_resource.clear()
        accounts = self.store.accounts.values()
        return _json(
            {
                "uptimeSeconds": round(time.monotonic() - self.started, 3),
                "requests": sum(self.by_status.values()),
                "byStatus": {str(k): v for k, v in sorted(self.by_status.items())},
                "rest": {
                    "requests": sum(self.rest_by_status.values()),
                    "byStatus": {str(k): v for k, v in sorted(self.rest_by_status.items())},
                    "byResource": dict(self.rest_by_resource),
                },
                "accounts": len(self.store.accounts),
                "records": sum(len(t) for a in accounts for t in a.tables.values()),
                "changes": sum(len(a.changes) for a in accounts),
                "mutatorApplied": self.mutator.applied,
            }
        )

    # --- middleware & lifecycle ----------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count statuses; turn :class:`AdminError` / :class:`_HTTPJson` into JSON replies."""
        try:
            response = await handler(request)
        except _HTTPJson as e:
            response = _json(e.body, e.status)
        except AdminError as e:
            response = _json({"error": e.message}, e.status)
        except web.HTTPException as e:
            self._count(request, e.status)
            raise
        self._count(request, response.status)
        return response

    def _count(self, request: web.Request, status: int) -> None:
        self.by_status[status] += 1
        if request.path.startswith(REST_PREFIX):
            self.rest_by_status[status] += 1

    async def on_shutdown(self, app: web.Application) -> None:
        self.stopping.set()
        await self.mutator.stop()


class _HTTPJson(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _basic_auth(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    return (client_id, secret) if sep else None


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AdminError(400, "body must be a JSON object") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AdminError(400, "body must be a JSON object")
    return data


def _resource(request: web.Request) -> str:
    resource = request.match_info["resource"]
    if resource not in RESOURCES:
        raise AdminError(404, f"unknown resource {resource!r}")
    return resource


def _rid(request: web.Request) -> int:
    try:
        return int(request.match_info["rid"])
    except ValueError:
        raise AdminError(404, "record id must be an integer") from None


def _check_resources(resources: object) -> None:
    if not isinstance(resources, list) or not all(r in RESOURCES for r in resources):
        raise AdminError(400, f"resources must be a list of: {', '.join(RESOURCES)}")


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float | None) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AdminError(400, f"{key} must be a number")
    if value < lo or (hi is not None and value > hi):
        raise AdminError(400, f"{key} out of range")
    return float(value)


def _admin_date(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return parse_iso_ms(value)
    except DateParseError as e:
        raise AdminError(400, str(e)) from None


SIMULATOR: web.AppKey[Simulator] = web.AppKey("simulator", Simulator)


def create_app(config: SimulatorConfig | None = None) -> web.Application:
    """Build the simulator application (accounts from ``config.accounts`` are seeded here)."""
    sim = Simulator(config or SimulatorConfig())
    sim.seed()
    app = web.Application(middlewares=[sim.middleware])
    app[SIMULATOR] = sim
    app.on_shutdown.append(sim.on_shutdown)
    r = app.router
    r.add_get("/app/oauth/authorize", sim.authorize)
    r.add_post("/token", sim.token)
    r.add_get(REST_PREFIX + "/{resource}", sim.rest_list)
    r.add_get(REST_PREFIX + "/{resource}/", sim.rest_list)
    r.add_get(REST_PREFIX + "/{resource}/{rid}", sim.rest_list)
    r.add_get("/_sim/accounts", sim.admin_accounts)
    r.add_get("/_sim/accounts/{account}", sim.admin_account_get)
    r.add_post("/_sim/accounts/{account}", sim.admin_account_create)
    r.add_get("/_sim/accounts/{account}/changes", sim.admin_changes)
    r.add_post("/_sim/accounts/{account}/{resource}", sim.admin_create)
    for method in ("GET", "PATCH", "DELETE"):
        r.add_route(method, "/_sim/accounts/{account}/{resource}/{rid}", sim.admin_record)
    r.add_post("/_sim/faults", sim.admin_faults_add)
    r.add_get("/_sim/faults", sim.admin_faults_list)
    r.add_delete("/_sim/faults", sim.admin_faults_clear)
    r.add_get("/_sim/mutator", sim.admin_mutator)
    r.add_post("/_sim/mutator", sim.admin_mutator)
    r.add_get("/_sim/stats", sim.admin_stats)
    r.add_delete("/_sim/stats", sim.admin_stats)
    return app
