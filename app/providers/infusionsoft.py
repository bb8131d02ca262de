"""The Infusionsoft (Keap) REST adapter: pages, token refresh, throttling.

Faults are values, not crashes: every provider failure surfaces as
:class:`ProviderError` with a ``kind`` the poll records as ``lastError``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from yarl import URL

from app.domain.limits import MAX_PAGE_SIZE
from app.logging import mask_url

log = logging.getLogger(__name__)

MAX_WALK_RESTARTS = 3
DEFAULT_THROTTLE_WAIT_S = 1.0


class ProviderError(Exception):
    """A poll-failing provider fault. ``kind``: timeout, connection, http_5xx, http_4xx,
    malformed, auth, throttled."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class TokenSource(Protocol):
    """Where the adapter gets access tokens; ``refresh`` is single-flight across workers."""

    async def access_token(self) -> str: ...

    async def refresh(self, rejected_token: str) -> str: ...


class RequestBudget(Protocol):
    """Shared request budget of one OAuth app (Keap throttles per app)."""

    async def acquire(self) -> None: ...


@dataclass
class FetchStats:
    requests: int = 0
    pages: int = 0
    throttled_s: float = 0.0
    restarts: int = 0
    refreshed: bool = False


@dataclass
class FetchResult:
    records: list[dict[str, Any]]
    stats: FetchStats = field(default_factory=FetchStats)


def throttle_wait_s(headers: Mapping[str, str], attempt: int) -> float:
    """How long to wait after a 429: ``Retry-After``, else Keap's throttle headers, else backoff."""
    retry_after = headers.get("Retry-After")
    if retry_after:
        try:
            return max(0.0, min(float(retry_after), 120.0))
        except ValueError:
            pass
    available = headers.get("x-keap-product-throttle-available")
    unit = (headers.get("x-keap-product-throttle-time-unit") or "").lower()
    if available is not None and available.strip() == "0" and unit.startswith("minute"):
        return 60.0 - (time.time() % 60.0) + 0.05
    return float(min(DEFAULT_THROTTLE_WAIT_S * 2.0**attempt, 30.0))


# Query characters yarl's ``update_query`` writes back exactly as they came (it decodes and
# re-encodes the query): a query of only these, in ``key=value`` pairs, keeps its text.
_KEPT = r"[A-Za-z0-9!$'()*+,\-./:?@_~]"
_PLAIN_QUERY_RE = re.compile(rf"{_KEPT}+={_KEPT}*(?:&{_KEPT}+={_KEPT}*)*")
_PAGING_KEYS = frozenset(("limit", "offset"))


def page_url(base_url: str, path: str, limit: int, offset: int) -> URL:
    """``path`` (with its query) under the REST base, with ``limit``/``offset`` set.

    The URL is yarl's ``update_query`` of the path. A plain query without ``limit`` or
    ``offset`` (every default resource's) comes out of it as itself followed by the two, so
    that string is built directly: it was 5 % of a quiet poll's CPU through yarl.
    """
    full = base_url.rstrip("/") + "/" + path.lstrip("/")
    head, question, query = full.partition("?")
    paging = f"limit={limit}&offset={offset}"
    if "#" not in full:
        if not question:
            return URL(f"{head}?{paging}", encoded=True)
        if _PLAIN_QUERY_RE.fullmatch(query) and _PAGING_KEYS.isdisjoint(
            pair.partition("=")[0] for pair in query.split("&")
        ):
            return URL(f"{full}&{paging}", encoded=True)
    return URL(full, encoded=True).update_query(limit=str(limit), offset=str(offset))


def body_text(body: bytes, charset: str | None) -> str:
    """The body as text in its declared charset (UTF-8 when none, or one Python lacks);
    bytes that are not of it are replaced, not refused."""
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


def parse_page(body: bytes, charset: str | None) -> Any:
    """A page's JSON; ``ProviderError("malformed")`` when it is none, nesting too deep for
    the parser included (a provider's page, however odd, is weather, not a crash).

    Not orjson, though faster: it reads an integer past 64 bits as a float, and an id
    that changes its spelling would break the delta's matching by id.
    """
    try:
        return json.loads(body_text(body, charset))
    except (ValueError, RecursionError) as exc:
        raise ProviderError("malformed", "response is not valid JSON") from exc


def items_of(body: Any, item_key: str) -> list[dict[str, Any]]:
    """The record list of Keap's envelope ``{"<resource>": [...], "count", "next"}``."""
    if isinstance(body, list):
        return [r for r in body if isinstance(r, dict)]
    if not isinstance(body, dict):
        raise ProviderError("malformed", "response is not a JSON object")
    items = body.get(item_key)
    if items is None:
        lists = [v for v in body.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise ProviderError("malformed", f"no '{item_key}' list in the response")
        items = lists[0]
    if not isinstance(items, list):
        raise ProviderError("malformed", f"'{item_key}' is not a list")
    return [r for r in items if isinstance(r, dict)]


class InfusionsoftClient:
    """Reads Keap list endpoints for one instance."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base_url: str,
        tokens: TokenSource,
        budget: RequestBudget | None = None,
        timeout_s: float = 30.0,
        max_throttle_wait_s: float = 300.0,
    ) -> None:
        self.http = http
        self.base_url = base_url
        self.tokens = tokens
        self.budget = budget
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.max_throttle_wait_s = max_throttle_wait_s

    async def get_json(self, url: URL, stats: FetchStats) -> Any:
        """GET with one token refresh on 401 and patient waiting on 429."""
        token = await self.tokens.access_token()
        refreshed = False
        throttle_attempt = 0
        while True:
            if self.budget is not None:
                await self.budget.acquire()
            status, headers, body, charset = await self._get(url, token)
            stats.requests += 1
            if status == 401 and not refreshed:
                token = await self.tokens.refresh(token)
                refreshed = stats.refreshed = True
                continue
            if status == 429:
                wait = throttle_wait_s(headers, throttle_attempt)
                throttle_attempt += 1
                if stats.throttled_s + wait > self.max_throttle_wait_s:
                    raise ProviderError("throttled", "provider kept answering 429")
                stats.throttled_s += wait
                await asyncio.sleep(wait)
                continue
            return self._decode(status, body, charset)

    async def _get(self, url: URL, token: str) -> tuple[int, Mapping[str, str], bytes, str | None]:
        try:
            async with self.http.get(
                url,
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                timeout=self.timeout,
                allow_redirects=False,
            ) as resp:
                return resp.status, resp.headers, await resp.read(), resp.charset
        except TimeoutError as exc:
            raise ProviderError("timeout", f"no answer within {self.timeout.total:g}s") from exc
        except aiohttp.ClientError as exc:
            raise ProviderError("connection", type(exc).__name__) from exc

    @staticmethod
    def _decode(status: int, body: bytes, charset: str | None) -> Any:
        if status == 401:
            raise ProviderError("auth", "access token rejected after a refresh")
        if status >= 500:
            raise ProviderError("http_5xx", f"provider answered {status}")
        if status != 200:
            text = body_text(body, charset)
            raise ProviderError("http_4xx", f"provider answered {status}: {text[:200]}")
        return parse_page(body, charset)

    async def fetch_all(
        self,
        path: str,
        item_key: str,
        id_of: Callable[[Mapping[str, Any]], Any],
        page_size: int = MAX_PAGE_SIZE,
    ) -> FetchResult:
        """Every record of a list endpoint, walking offsets until a short or empty page.

        Pages overlap by one record: if the first record of a page is not the
        last of the previous one, rows shifted under us (a delete, a record
        entering the filter) and the walk restarts; duplicates are harmless
        because events are deduplicated by id, a skipped record would not be.
        """
        limit = max(2, min(page_size, MAX_PAGE_SIZE))  # the overlap needs two
        stats = FetchStats()
        for _ in range(MAX_WALK_RESTARTS + 1):
            records, consistent = await self._walk(path, item_key, id_of, limit, stats)
            if consistent:
                return FetchResult(records, stats)
            stats.restarts += 1
        log.warning("pages kept shifting under %s; accepting the last walk", mask_url(path))
        return FetchResult(records, stats)

    async def _walk(
        self,
        path: str,
        item_key: str,
        id_of: Callable[[Mapping[str, Any]], Any],
        limit: int,
        stats: FetchStats,
    ) -> tuple[list[dict[str, Any]], bool]:
        """One pass over the pages; ``False`` when the overlap check saw rows shift."""
        records: list[dict[str, Any]] = []
        offset = 0
        while True:
            raw = items_of(
                await self.get_json(page_url(self.base_url, path, limit, offset), stats),
                item_key,
            )
            stats.pages += 1
            if offset == 0:
                records.extend(raw)
            elif not raw or id_of(raw[0]) != id_of(records[-1]):
                return records, False
            else:
                records.extend(raw[1:])
            if len(raw) < limit:
                return records, True
            # The next page starts on this page's last record (the overlap above).
            offset += limit - 1
