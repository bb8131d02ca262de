"""Signatures over exact bytes, checked with the reference Standard Webhooks library."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.domain.signing import (
    elements_signature,
    signed_headers,
    standard_webhooks_key,
    standard_webhooks_signature,
)

BODY = '{"message":{"eventId":"d1","raw":{"contacts":[{"name":"Zoë"}]}}}'.encode()
RAW_KEY = bytes(range(32))
WHSEC = "whsec_" + base64.b64encode(RAW_KEY).decode()


def test_elements_signature_matches_an_independent_hmac() -> None:
    key = "my-signature-key"
    expected = base64.b64encode(hmac.new(key.encode(), BODY, hashlib.sha256).digest()).decode()
    assert elements_signature(key, BODY) == "sha256=" + expected


def test_elements_signature_uses_a_whsec_key_verbatim() -> None:
    expected = base64.b64encode(hmac.new(WHSEC.encode(), BODY, hashlib.sha256).digest())
    assert elements_signature(WHSEC, BODY) == "sha256=" + expected.decode()


def test_whsec_key_verifies_with_the_reference_library() -> None:
    ts = int(time.time())
    headers = signed_headers(BODY, "msg_2Lh", ts, WHSEC)
    Webhook(WHSEC).verify(BODY, headers)
    assert headers["webhook-signature"] == standard_webhooks_signature(WHSEC, "msg_2Lh", ts, BODY)
    assert standard_webhooks_key(WHSEC) == RAW_KEY


def test_plain_key_verifies_as_its_whsec_equivalent() -> None:
    key = "plain sécret key"
    ts = int(time.time())
    headers = signed_headers(BODY, "d-123", ts, key)
    equivalent = "whsec_" + base64.b64encode(key.encode("utf-8")).decode()
    Webhook(equivalent).verify(BODY, headers)
    assert standard_webhooks_key(key) == key.encode("utf-8")


def test_tampering_fails_verification() -> None:
    ts = int(time.time())
    headers = signed_headers(BODY, "d-123", ts, WHSEC)
    with pytest.raises(WebhookVerificationError):
        Webhook(WHSEC).verify(BODY + b" ", headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(WHSEC).verify(BODY, {**headers, "webhook-id": "d-124"})
    with pytest.raises(WebhookVerificationError):
        Webhook(WHSEC).verify(BODY, {**headers, "webhook-timestamp": str(ts + 1)})


def test_unpadded_whsec_key_decodes_like_the_reference_library() -> None:
    unpadded = "whsec_" + base64.b64encode(b"0123456789").decode().rstrip("=")
    ts = int(time.time())
    Webhook(unpadded).verify(BODY, signed_headers(BODY, "d", ts, unpadded))


def test_bad_whsec_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="base64"):
        standard_webhooks_key("whsec_a")
    with pytest.raises(ValueError, match="empty"):
        standard_webhooks_key("whsec_")


def test_headers_without_a_key() -> None:
    headers = signed_headers(BODY, "d-1", 1_700_000_000, None)
    assert headers == {
        "Content-Type": "application/json",
        "webhook-id": "d-1",
        "webhook-timestamp": "1700000000",
    }
    assert signed_headers(BODY, "d-1", 1_700_000_000, "") == headers


def test_headers_with_a_key() -> None:
    headers = signed_headers(BODY, "d-1", 1_700_000_000, "k")
    assert headers["Elements-Webhook-Signature"] == elements_signature("k", BODY)
    assert headers["webhook-signature"].startswith("v1,")
    signed = b"d-1.1700000000." + BODY
    mac = base64.b64encode(hmac.new(b"k", signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == "v1," + mac
