"""Provider pages are read in their declared charset (UTF-8 by default, bad bytes replaced);
what is not JSON is a malformed page, never a crash."""

from __future__ import annotations

import pytest

from app.providers.infusionsoft import ProviderError, body_text, parse_page


@pytest.mark.parametrize(
    ("raw", "charset", "expected"),
    [
        ('{"v": "Zoë"}'.encode(), None, "Zoë"),
        (b'{"v": 123456789012345678901234567890}', "utf-8", 123456789012345678901234567890),
        (b'{"v": "\xff"}', None, "\ufffd"),  # not UTF-8: replaced
        ('{"v": "Zoë"}'.encode("latin-1"), "iso-8859-1", "Zoë"),
        (b'{"v": "x"}', "no-such-charset", "x"),  # read as UTF-8, not a LookupError
    ],
)
def test_a_page_is_read_in_its_charset(raw: bytes, charset: str | None, expected: object) -> None:
    assert parse_page(raw, charset) == {"v": expected}


@pytest.mark.parametrize("raw", [b"", b"{", b"<html>502</html>", b"[" * 100_000 + b"]" * 100_000])
def test_what_is_not_json_is_a_malformed_page(raw: bytes) -> None:
    with pytest.raises(ProviderError) as caught:
        parse_page(raw, None)
    assert caught.value.kind == "malformed"


def test_an_error_body_is_shown_in_its_charset_or_utf8() -> None:
    assert body_text("é".encode("latin-1"), "latin-1") == "é"
    assert body_text(b"\xff ok", None) == "\ufffd ok"
    assert body_text(b"ok", "no-such-charset") == "ok"
