"""Callback signatures over the exact bytes that are sent (SPEC §5).

Two headers are produced for every signed delivery:

* ``Elements-Webhook-Signature: sha256=<base64 HMAC-SHA256(key, body)>`` — what Open Connectors
  sends, so existing receivers keep verifying;
* ``webhook-signature: v1,<base64 HMAC-SHA256(k, "<id>.<timestamp>.<body>")>`` — Standard
  Webhooks, which also binds the delivery id and the attempt time (replay protection).

Both are computed over the body *bytes*: receivers that re-serialize JSON before verifying fail
(svix-webhooks#1463), so callers must sign and send the same ``bytes`` object.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac

__all__ = [
    "WHSEC_PREFIX",
    "elements_signature",
    "signed_headers",
    "standard_webhooks_key",
    "standard_webhooks_signature",
]

WHSEC_PREFIX = "whsec_"


def _b64_hmac(key: bytes, data: bytes) -> str:
    return base64.b64encode(hmac.new(key, data, hashlib.sha256).digest()).decode("ascii")


def elements_signature(key: str, body: bytes) -> str:
    """``sha256=`` + base64 HMAC-SHA256 of ``body`` keyed with ``key``'s UTF-8 bytes.

    The key is used as-is (no ``whsec_`` decoding): Open Connectors receivers compute it
    that way from the configured ``event.notification.signature.key``.
    """
    return "sha256=" + _b64_hmac(key.encode("utf-8"), body)


@functools.lru_cache(maxsize=4096)
def standard_webhooks_key(key: str) -> bytes:
    """The HMAC key Standard Webhooks uses for ``key``.

    ``whsec_<base64>`` keys are decoded the way the reference ``standardwebhooks`` library
    decodes them (missing padding tolerated), so a receiver using that library with the same
    secret verifies our signatures; any other key is used as its UTF-8 bytes (its whsec_ form
    is ``"whsec_" + base64(key)``). Raises :class:`ValueError` for a ``whsec_`` key whose
    payload is not base64 or is empty. Cached: one key signs many deliveries.
    """
    if not key.startswith(WHSEC_PREFIX):
        return key.encode("utf-8")
    try:
        decoded = base64.b64decode(key[len(WHSEC_PREFIX) :] + "==")
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a whsec_ signature key must be base64 after the prefix") from exc
    if not decoded:
        raise ValueError("a whsec_ signature key must not be empty")
    return decoded


def standard_webhooks_signature(key: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,`` + base64 HMAC-SHA256 of ``"<msg_id>.<timestamp>." + body`` (Standard Webhooks)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + _b64_hmac(standard_webhooks_key(key), signed)


def signed_headers(
    body: bytes, delivery_id: str, timestamp: int, key: str | None
) -> dict[str, str]:
    """Headers of one delivery attempt.

    ``webhook-id`` is the delivery id (stable across retries so receivers can dedupe) and
    ``webhook-timestamp`` the unix seconds of *this* attempt; the signature headers are added
    only when the instance has a signature key.
    """
    headers = {
        "Content-Type": "application/json",
        "webhook-id": delivery_id,
        "webhook-timestamp": str(timestamp),
    }
    if key:
        headers["webhook-signature"] = standard_webhooks_signature(
            key, delivery_id, timestamp, body
        )
        headers["Elements-Webhook-Signature"] = elements_signature(key, body)
    return headers
