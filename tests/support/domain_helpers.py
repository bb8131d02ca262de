"""Helpers the tests of ``app/domain`` need and the product does not.

They used to live in the domain modules' public API although nothing but tests called them;
here they are built only from the modules' public names.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.domain.delta import Change, DeltaResult
from app.domain.templates import UrlTemplate
from app.domain.watermark import Watermark


def merge_deltas(results: Sequence[DeltaResult]) -> DeltaResult:
    """Combine per-page results computed against the same starting watermark.

    Equivalent to one ``compute_delta`` over all pages (what the tests check): an id reported
    by several pages keeps its newest change (pages shift while records change), the watermark
    is the newest one with the union of the ids seen at it, and skipped records are
    concatenated.
    """
    if not results:
        raise ValueError("merge_deltas needs at least one result")
    newest: dict[str, Change] = {}
    for result in results:
        for change in result.changes:
            kept = newest.get(change.object_id)
            if kept is None or change.date > kept.date:
                newest[change.object_id] = change
    at = max(result.watermark.at for result in results)
    ids = frozenset().union(*(r.watermark.ids for r in results if r.watermark.at == at))
    skipped = [item for result in results for item in result.skipped_unparseable]
    return DeltaResult(list(newest.values()), Watermark(at, ids), skipped)


def template_variables(template: UrlTemplate) -> tuple[str, ...]:
    """The ``${...}`` variables of a compiled URL, as written, in order (empty: no date filter)."""
    return tuple(part.name for part in template.parts if not isinstance(part, str))
