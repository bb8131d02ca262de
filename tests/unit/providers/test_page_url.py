"""Page URLs: the direct string for plain queries must be exactly what yarl's
``update_query`` made of them (the provider sees the same request)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from app.providers.infusionsoft import page_url

BASE = "https://api.infusionsoft.com/crm/rest/v1"


def _through_yarl(base: str, path: str, limit: int, offset: int) -> URL:
    url = URL(base.rstrip("/") + "/" + path.lstrip("/"), encoded=True)
    return url.update_query(limit=str(limit), offset=str(offset))


@pytest.mark.parametrize(
    "path",
    [
        "/contacts?since=2026-12-07T20:49:14.320Z&order=id",
        "/transactions?since=2026-12-07T20:49:14.320Z",
        "/opportunities",
        "contacts?a=1&a=2",
        "/contacts?since=2026-12-07T20%3A49%3A14.320%2B01%3A00&order=id",  # re-encoded
        "/contacts?limit=5&order=id",  # replaced, not repeated
        "/contacts?order=id&offset=7",
        "/contacts?flag&x=1",  # a key without '='
        "/contacts?a=b;c=d",
        "/contacts?a=%20b+c",
        "/contacts?",
        "/contacts?a=1&",
        "/contacts?a=1#frag",
        "/contacts?a=1&&b=2",
    ],
)
def test_page_url_is_what_update_query_makes(path: str) -> None:
    for limit, offset in ((1000, 0), (2, 999)):
        made = page_url(BASE, path, limit, offset)
        assert str(made) == str(_through_yarl(BASE, path, limit, offset))
        assert made == _through_yarl(BASE, path, limit, offset)


_QUERY_TEXT = st.lists(
    st.sampled_from([*"abcXYZ019=&?+-._~:!$'()*,/@%; #[]\"<>^`{|}é", "%2B", "limit", "offset"]),
    max_size=20,
).map("".join)


@given(query=_QUERY_TEXT, limit=st.integers(1, 1000), offset=st.integers(0, 10**6))
def test_any_query_gets_the_same_url_as_through_yarl(query: str, limit: int, offset: int) -> None:
    path = f"/contacts?{query}"
    assert str(page_url(BASE, path, limit, offset)) == str(_through_yarl(BASE, path, limit, offset))
