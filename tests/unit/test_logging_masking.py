"""Secrets never reach a log line: URL masking, database-error redaction, the access log."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import asyncpg.exceptions
import pytest
from aiohttp.test_utils import make_mocked_request
from aiohttp.web import Response

from app.logging import (
    MASK,
    MaskingAccessLogger,
    RedactingFilter,
    describe_database_error,
    format_exception_safely,
    is_database_error,
    is_sensitive_name,
    mask_url,
)


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        (
            "/elements/api-v2/elements/infusionsoftrest/oauth/url"
            "?apiKey=k&apiSecret=S3CRET&callbackUrl=https://a.example/cb&state=st",
            "/elements/api-v2/elements/infusionsoftrest/oauth/url"
            f"?apiKey={MASK}&apiSecret={MASK}&callbackUrl=https://a.example/cb&state={MASK}",
        ),
        (
            "https://cb.example/oauth?code=AUTHCODE&scope=full",
            f"https://cb.example/oauth?code={MASK}&scope=full",
        ),
        (
            "https://u:p4ss@hooks.example:8443/in?x=1",
            f"https://{MASK}@hooks.example:8443/in?x=1",
        ),
        ("redis://:R3DIS@127.0.0.1:6379/0", f"redis://{MASK}@127.0.0.1:6379/0"),
        (
            "https://idp.example/cb#access_token=AT&token_type=bearer",
            f"https://idp.example/cb#access_token={MASK}&token_type={MASK}",
        ),
        (
            "/token?client_secret=a&Client-Secret=b&CLIENTSECRET=c&client%5Fsecret=d",
            f"/token?client_secret={MASK}&Client-Secret={MASK}&CLIENTSECRET={MASK}"
            f"&client%5Fsecret={MASK}",
        ),
        (
            "/x?refresh_token=r&access_token=a&token=t&id_token=i&password=p&sig=s",
            f"/x?refresh_token={MASK}&access_token={MASK}&token={MASK}&id_token={MASK}"
            f"&password={MASK}&sig={MASK}",
        ),
        (
            "/instances?page=2&pageSize=100&objectType=contacts",
            "/instances?page=2&pageSize=100&objectType=contacts",
        ),
        ("/contacts?limit=1000&offset=0&since=2026-01-01", None),
        ("", None),
        ("no url here, a=b and c@d", None),
        (
            "/weird?=&&apiSecret&token=&%zz=1&secret=%ZZ",
            f"/weird?=&&apiSecret&token=&%zz=1&secret={MASK}",
        ),
    ],
)
def test_mask_url(raw: str, masked: str | None) -> None:
    assert mask_url(raw) == (raw if masked is None else masked)


def test_mask_url_inside_text_masks_every_url() -> None:
    text = (
        "GET https://a.example/p?token=T1 failed; retried https://u:pw@b.example/?apiSecret=T2 "
        "(url='https://c.example/q?code=T3')"
    )
    masked = mask_url(text)
    assert "T1" not in masked
    assert "T2" not in masked
    assert "T3" not in masked
    assert "pw" not in masked
    assert "https://a.example/p?token=" in masked
    assert "url='https://c.example/q?code=" in masked


def test_mask_url_is_idempotent() -> None:
    once = mask_url("https://u:p@h/x?apiSecret=s&state=t")
    assert mask_url(once) == once


@pytest.mark.parametrize(
    "name", ["apiSecret", "oauth.api.secret", "X-Api-Key", "STATE", "Code", "refreshToken"]
)
def test_secret_like_names(name: str) -> None:
    assert is_sensitive_name(name)


@pytest.mark.parametrize("name", ["page", "pageSize", "objectType", "since", "limit", "scope"])
def test_ordinary_names(name: str) -> None:
    assert not is_sensitive_name(name)


def _unique_violation() -> asyncpg.exceptions.UniqueViolationError:
    return asyncpg.exceptions.UniqueViolationError.new(
        {
            "C": "23505",
            "M": 'duplicate key value violates unique constraint "orgs_name_key"',
            "D": "Key (name)=(S3CRET) already exists.",
            "n": "orgs_name_key",
            "t": "organizations",
        }
    )


def test_database_error_is_described_without_its_detail() -> None:
    exc = _unique_violation()
    assert "S3CRET" in str(exc)  # the driver's own text quotes the row
    assert is_database_error(exc)
    text = describe_database_error(exc)
    assert "S3CRET" not in text
    assert text == (
        "UniqueViolationError (SQLSTATE 23505, constraint orgs_name_key, table organizations;"
        " detail hidden)"
    )
    assert not is_database_error(ValueError("x"))


def _raise_chained() -> None:
    try:
        raise _unique_violation()
    except asyncpg.exceptions.UniqueViolationError as exc:
        raise RuntimeError("storing https://u:pw@h.example/?token=T0K3N failed") from exc


def test_traceback_redacts_the_driver_error_in_the_chain() -> None:
    with pytest.raises(RuntimeError) as info:
        _raise_chained()
    text = format_exception_safely(info.value)
    assert "S3CRET" not in text
    assert "T0K3N" not in text
    assert "pw@" not in text
    assert "asyncpg.exceptions.UniqueViolationError: UniqueViolationError (SQLSTATE 23505" in text
    assert "direct cause of the following exception" in text
    assert text.count("Traceback (most recent call last):") == 2
    assert "_raise_chained" in text  # frames are kept


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("tests.redaction")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield logger, stream
    logger.removeHandler(handler)


def test_filter_masks_urls_and_database_errors(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    logger.info("calling %s", "https://api.example/x?access_token=AT0K")
    logger.warning("insert failed: %s", _unique_violation())
    try:
        _raise_chained()
    except RuntimeError:
        logger.exception("poll crashed")
    logger.info("100%% done, %d left", 3)
    out = stream.getvalue()
    for secret in ("AT0K", "S3CRET", "T0K3N", "pw@"):
        assert secret not in out
    assert f"access_token={MASK}" in out
    assert "insert failed: UniqueViolationError (SQLSTATE 23505" in out
    assert "100% done, 3 left" in out


def test_access_logger_masks_the_request_line_and_referer() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("tests.access")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        request = make_mocked_request(
            "GET",
            "/elements/api-v2/elements/infusionsoftrest/oauth/url?apiKey=k&apiSecret=S3CRET",
            headers={"Referer": "https://app.example/cb?code=C0DE", "User-Agent": "ua"},
        )
        access = MaskingAccessLogger(logger, "")
        assert access.enabled
        access.log(request, Response(status=200, text="ok"), 0.0123)
    finally:
        logger.removeHandler(handler)
    line = stream.getvalue()
    assert "S3CRET" not in line
    assert "C0DE" not in line
    assert f'"GET /elements/api-v2/elements/infusionsoftrest/oauth/url?apiKey={MASK}' in line
    assert " 200 0 0.012s " in line
    assert '"ua"' in line


def test_filter_redacts_a_database_error_quoted_as_text_like_celery_does(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    exc = asyncpg.exceptions.DataError("invalid input for query argument $1: 'S3CRET'")
    try:
        raise exc
    except asyncpg.exceptions.DataError:
        # celery.app.trace: a mapping of context with the exception's safe_repr.
        logger.error(
            "Task %(name)s raised unexpected: %(exc)s",
            {"name": "delivery.sweep", "exc": repr(exc)},
            exc_info=True,
        )
    out = stream.getvalue()
    assert "S3CRET" not in out
    assert "Task delivery.sweep raised unexpected: DataError (SQLSTATE 22000; detail hidden)" in out
