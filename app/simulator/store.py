"""In-memory accounts, records, change log, and the list query (filter, order, paginate).

Pure logic, no aiohttp: every method takes times in epoch ms so tests can drive it directly.

Storage is columnar per (account, resource): three ``array('q')`` columns (id, created ms,
updated ms) sorted by id, plus an optional overlay of admin-set fields. Ids only grow, so inserts
append. A secondary index sorted by the filter time is built lazily for large tables so that a
``since`` query is a bisect instead of a scan.
"""

from __future__ import annotations

import random
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from app.simulator.resources import RESOURCES, OrderKey, ResourceSpec

__all__ = [
    "INDEX_THRESHOLD",
    "Account",
    "Change",
    "Page",
    "QueryError",
    "RecordNotFound",
    "Store",
    "Table",
]

# Tables smaller than this are filtered by a linear scan (cheaper than maintaining an index).
INDEX_THRESHOLD = 2048
# Fields that the admin API may never set on a record.
_PROTECTED = frozenset({"id"})

Op = Literal["create", "update", "delete"]


class QueryError(ValueError):
    """A bad list query (unknown ``order`` etc.); the message is shown to the caller."""


class RecordNotFound(KeyError):
    """No such record in the account/resource."""


@dataclass(frozen=True, slots=True)
class Change:
    """One ground-truth change: ``at_ms`` is wall-clock time, ``record_ms`` the stamped time."""

    at_ms: int
    op: Op
    resource: str
    rid: int
    record_ms: int


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list query."""

    records: list[dict[str, Any]]
    count: int


class Table:
    """Records of one resource in one account."""

    __slots__ = (
        "_idx_ids",
        "_idx_keys",
        "created",
        "extra",
        "ids",
        "next_id",
        "on_created",
        "updated",
    )

    def __init__(self, on_created: bool = False) -> None:
        #: whether ``since``/``until`` compare the created time (transactions) or the updated one
        self.on_created = on_created
        self.ids = array("q")
        self.created = array("q")
        self.updated = array("q")
        self.extra: dict[int, dict[str, Any]] | None = None
        self.next_id = 1
        self._idx_keys: array[int] | None = None
        self._idx_ids: array[int] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def position(self, rid: int) -> int:
        pos = bisect_left(self.ids, rid)
        if pos == len(self.ids) or self.ids[pos] != rid:
            raise RecordNotFound(rid)
        return pos

    def insert(self, created: int, updated: int, extra: dict[str, Any] | None = None) -> int:
        rid = self.next_id
        self.next_id += 1
        self.ids.append(rid)
        self.created.append(created)
        self.updated.append(updated)
        if extra:
            if self.extra is None:
                self.extra = {}
            self.extra[rid] = extra
        self._index_add(created, updated, rid)
        return rid

    def bulk_load(self, rows: Sequence[tuple[int, int]]) -> None:
        """Append seeded ``(created, updated)`` rows quickly (no index maintenance)."""
        start = self.next_id
        self.ids.extend(range(start, start + len(rows)))
        self.created.extend(r[0] for r in rows)
        self.updated.extend(r[1] for r in rows)
        self.next_id = start + len(rows)
        self._idx_keys = self._idx_ids = None

    def touch(self, rid: int, updated: int, fields: dict[str, Any] | None = None) -> None:
        pos = self.position(rid)
        self._index_remove(self.created[pos], self.updated[pos], rid)
        self.updated[pos] = updated
        if fields:
            if self.extra is None:
                self.extra = {}
            self.extra.setdefault(rid, {}).update(fields)
        self._index_add(self.created[pos], updated, rid)

    def delete(self, rid: int) -> None:
        pos = self.position(rid)
        self._index_remove(self.created[pos], self.updated[pos], rid)
        del self.ids[pos]
        del self.created[pos]
        del self.updated[pos]
        if self.extra is not None:
            self.extra.pop(rid, None)

    # --- secondary index on the filter time --------------------------------------------------

    def _key(self, created: int, updated: int) -> int:
        return created if self.on_created else updated

    def _index_add(self, created: int, updated: int, rid: int) -> None:
        if self._idx_keys is None or self._idx_ids is None:
            return
        key = self._key(created, updated)
        pos = bisect_right(self._idx_keys, key)
        # ids increase over time so a new row usually lands at the end; keep (key, id) order.
        while pos > 0 and self._idx_keys[pos - 1] == key and self._idx_ids[pos - 1] > rid:
            pos -= 1
        self._idx_keys.insert(pos, key)
        self._idx_ids.insert(pos, rid)

    def _index_remove(self, created: int, updated: int, rid: int) -> None:
        if self._idx_keys is None or self._idx_ids is None:
            return
        key = self._key(created, updated)
        lo = bisect_left(self._idx_keys, key)
        hi = bisect_right(self._idx_keys, key)
        for pos in range(lo, hi):
            if self._idx_ids[pos] == rid:
                del self._idx_keys[pos]
                del self._idx_ids[pos]
                return

    def ids_in_range(self, since: int | None, until: int | None) -> list[int]:
        """Ids whose filter time is in ``[since, until)``, in no particular order."""
        column = self.created if self.on_created else self.updated
        lo = -(2**63) if since is None else since
        hi = 2**63 - 1 if until is None else until
        if len(self.ids) < INDEX_THRESHOLD:
            ids = self.ids
            return [ids[i] for i, t in enumerate(column) if lo <= t < hi]
        keys, idx_ids = self._index()
        start = bisect_left(keys, lo)
        stop = bisect_left(keys, hi)
        return list(idx_ids[start:stop])

    def _index(self) -> tuple[array[int], array[int]]:
        if self._idx_keys is None or self._idx_ids is None:
            column = self.created if self.on_created else self.updated
            pairs = sorted(zip(column, self.ids, strict=True))
            self._idx_keys = array("q", (k for k, _ in pairs))
            self._idx_ids = array("q", (i for _, i in pairs))
        return self._idx_keys, self._idx_ids


@dataclass(slots=True)
class Account:
    """One simulated Keap account."""

    name: str
    salt: int
    tables: dict[str, Table] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)

    def table(self, resource: str) -> Table:
        table = self.tables.get(resource)
        if table is None:
            spec = RESOURCES[resource]
            table = self.tables[resource] = Table(on_created=spec.filter_on == "created")
        return table


def _spec(resource: str) -> ResourceSpec:
    spec = RESOURCES.get(resource)
    if spec is None:
        raise QueryError(f"unknown resource {resource!r}")
    return spec


class Store:
    """All accounts. ``skew_ms`` makes record times lag the wall clock (``now - skew``)."""

    def __init__(self, seed: int | None = None, skew_ms: int = 0) -> None:
        self.seed = seed
        self.skew_ms = skew_ms
        self.accounts: dict[str, Account] = {}
        self.account_names: list[str] = []  # for O(1) random choice by the mutator

    # --- accounts ------------------------------------------------------------------------------

    def account(self, name: str) -> Account:
        """Get or create an (empty) account."""
        acct = self.accounts.get(name)
        if acct is None:
            rng = random.Random(f"{self.seed}:{name}") if self.seed is not None else random
            salt = rng.getrandbits(32)
            acct = self.accounts[name] = Account(name, salt)
            self.account_names.append(name)
        return acct

    def seed_account(
        self,
        name: str,
        records: int,
        now_ms: int,
        resources: Iterable[str] | None = None,
        history_days: float = 30.0,
    ) -> Account:
        """Create ``records`` records spread round-robin over ``resources`` (default: all).

        Seeded records are history: their dates lie in the ``history_days`` before ``now_ms`` and
        they are not written to the change log. Deterministic for a given ``--seed``.
        """
        acct = self.account(name)
        names = list(resources) if resources is not None else list(RESOURCES)
        for resource in names:
            _spec(resource)
        if not names or records <= 0:
            return acct
        rng = random.Random(f"{self.seed}:{name}:seed") if self.seed is not None else random
        span = int(history_days * 86_400_000)
        base = now_ms - self.skew_ms - span
        per = [
            records // len(names) + (1 if i < records % len(names) else 0)
            for i in range(len(names))
        ]
        for resource, n in zip(names, per, strict=True):
            if n == 0:
                continue
            # Created times increase with id, like a real database; updates come later.
            created = sorted(base + rng.randrange(span) for _ in range(n))
            rows = [
                (c, c + (0 if rng.random() < 0.5 else rng.randrange(base + span - c + 1)))
                for c in created
            ]
            acct.table(resource).bulk_load(rows)
        return acct

    # --- writes ----------------------------------------------------------------------------------

    def record_time(self, now_ms: int) -> int:
        return now_ms - self.skew_ms

    def create(
        self, account: str, resource: str, now_ms: int, fields: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        spec = _spec(resource)
        acct = self.account(account)
        stamp = self.record_time(now_ms)
        extra = _clean(fields, spec)
        rid = acct.table(resource).insert(stamp, stamp, extra)
        acct.changes.append(Change(now_ms, "create", resource, rid, stamp))
        return self.get(account, resource, rid)

    def update(
        self,
        account: str,
        resource: str,
        rid: int,
        now_ms: int,
        fields: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        spec = _spec(resource)
        acct = self._existing(account)
        stamp = self.record_time(now_ms)
        acct.table(resource).touch(rid, stamp, _clean(fields, spec))
        acct.changes.append(Change(now_ms, "update", resource, rid, stamp))
        return self.get(account, resource, rid)

    def delete(self, account: str, resource: str, rid: int, now_ms: int) -> None:
        _spec(resource)
        acct = self._existing(account)
        acct.table(resource).delete(rid)
        acct.changes.append(Change(now_ms, "delete", resource, rid, self.record_time(now_ms)))

    def _existing(self, account: str) -> Account:
        acct = self.accounts.get(account)
        if acct is None:
            raise RecordNotFound(account)
        return acct

    # --- reads -----------------------------------------------------------------------------------

    def get(self, account: str, resource: str, rid: int) -> dict[str, Any]:
        spec = _spec(resource)
        acct = self._existing(account)
        table = acct.tables.get(resource)
        if table is None:
            raise RecordNotFound(rid)
        return _render(spec, acct, table, table.position(rid))

    def changes_since(self, account: str, since_ms: int | None) -> list[Change]:
        acct = self._existing(account)
        if since_ms is None:
            return list(acct.changes)
        # The log is appended in wall-clock order, so bisect on at_ms.
        start = bisect_left(acct.changes, since_ms, key=lambda c: c.at_ms)
        return acct.changes[start:]

    def query(
        self,
        account: str,
        resource: str,
        *,
        since: int | None = None,
        until: int | None = None,
        order: str = "id",
        descending: bool = False,
        offset: int = 0,
        limit: int = 1000,
    ) -> Page:
        """Keap's list semantics: filter, order (ties by id), then ``[offset:offset+limit]``.

        ``since`` is inclusive and ``until`` exclusive, both in ms against the true time; they
        are ignored on resources without a date filter (``spec.filter_on is None``).
        """
        spec = _spec(resource)
        key = spec.orders.get(order.lower())
        if key is None:
            valid = ", ".join(spec.orders)
            raise QueryError(f"Invalid order {order!r} for {resource}; expected one of: {valid}")
        acct = self.accounts.get(account)
        table = acct.tables.get(resource) if acct is not None else None
        if acct is None or table is None or len(table) == 0:
            return Page([], 0)
        filtered = spec.filter_on is not None and (since is not None or until is not None)
        if not filtered and key == "id":
            count = len(table)
            if descending:
                stop = max(count - offset, 0)
                positions: Iterable[int] = range(stop - 1, max(stop - limit, 0) - 1, -1)
            else:
                positions = range(min(offset, count), min(offset + limit, count))
            return Page([_render(spec, acct, table, p) for p in positions], count)
        if filtered:
            ids = table.ids_in_range(since, until)
            positions_all = [table.position(i) for i in ids]
        else:
            positions_all = list(range(len(table)))
        positions_all.sort(key=_sort_key(spec, acct, table, key), reverse=descending)
        window = positions_all[offset : offset + limit]
        return Page([_render(spec, acct, table, p) for p in window], len(positions_all))


def _clean(fields: dict[str, Any] | None, spec: ResourceSpec) -> dict[str, Any] | None:
    if not fields:
        return None
    return {
        k: v for k, v in fields.items() if k not in _PROTECTED and k not in spec.computed
    } or None


def _render(spec: ResourceSpec, acct: Account, table: Table, pos: int) -> dict[str, Any]:
    rid = table.ids[pos]
    record = spec.render(rid, table.created[pos], table.updated[pos], acct.salt)
    if table.extra is not None:
        extra = table.extra.get(rid)
        if extra:
            record.update(extra)
    return record


def _sort_key(spec: ResourceSpec, acct: Account, table: Table, key: OrderKey) -> Any:
    ids = table.ids
    if key == "id":
        return ids.__getitem__
    if key == "created":
        created = table.created
        return lambda p: (created[p], ids[p])
    if key == "updated":
        updated = table.updated
        return lambda p: (updated[p], ids[p])
    name = key[1]

    def by_field(p: int) -> tuple[str, int]:
        record = _render(spec, acct, table, p)
        if name == "email":
            emails = record.get("email_addresses") or [{}]
            value = emails[0].get("email")
        else:
            value = record.get(name)
        return ("" if value is None else str(value).lower(), ids[p])

    return by_field
