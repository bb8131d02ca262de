"""The pollable-instance predicate is written once (``app.models.DUE_PREDICATE``).

Beat's claim, the health gauges and ``pollinator status`` build their SQL from it, and
the partial index ``ix_instances_due`` states it. The index is created by a migration,
which is history and keeps its own copy of the text: if the constant changes without a
migration that recreates the index, the claim stops implying the index's predicate and
every tick scans the whole table, silently. These tests fail instead.
"""

from __future__ import annotations

import psycopg
import pytest

from app.models import DUE_PREDICATE, Instance
from app.store.schedule import CLAIM
from tests.conftest import ServiceUrls

pytestmark = pytest.mark.integration


def _index_predicate(conn: psycopg.Connection[tuple[str]], index: str) -> str:
    row = conn.execute(
        "SELECT pg_get_expr(i.indpred, i.indrelid) FROM pg_index AS i"
        " WHERE i.indexrelid = CAST(%s AS regclass)",
        (index,),
    ).fetchone()
    assert row is not None, f"no index {index}"
    assert row[0] is not None, f"{index} has no predicate"
    return row[0]


def test_the_migrated_due_index_states_the_constant(service_urls: ServiceUrls) -> None:
    """Both predicates as PostgreSQL reads them back, so spacing and parentheses agree."""
    with psycopg.connect(service_urls.database_url) as conn:
        migrated = _index_predicate(conn, "ix_instances_due")
        conn.execute(
            "CREATE INDEX due_predicate_probe ON instances (next_poll_at)"
            f" WHERE {DUE_PREDICATE}"  # the constant as PostgreSQL parses it
        )
        try:
            assert migrated == _index_predicate(conn, "due_predicate_probe")
        finally:
            conn.rollback()


def test_the_model_and_beats_claim_use_the_constant() -> None:
    (index,) = [i for i in Instance.__table__.indexes if i.name == "ix_instances_due"]  # type: ignore[attr-defined]
    assert str(index.dialect_options["postgresql"]["where"]) == DUE_PREDICATE
    assert f"WHERE {DUE_PREDICATE} AND next_poll_at <= :now" in CLAIM.text
