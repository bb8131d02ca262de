"""Secrets: generation, hashing for lookup, and encryption at rest."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

REDACTED = "********"


def new_secret() -> str:
    """A 256-bit random secret, URL-safe."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """SHA-256 hex digest used to find a secret's owner without storing the secret.

    The secrets are 256-bit random values, so a slow password hash adds nothing
    and a deterministic digest allows an indexed lookup.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


class DecryptionError(ValueError):
    """Stored secrets cannot be read with the configured key."""


class SecretBox:
    """Encrypts JSON documents with a Fernet key derived from ``POLLINATOR_SECRET_KEY``."""

    def __init__(self, secret_key: str) -> None:
        digest = hashlib.sha256(b"pollinator/secrets/v1:" + secret_key.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    def seal(self, document: dict[str, Any]) -> bytes:
        """Encrypt a JSON-serializable mapping."""
        return self._fernet.encrypt(json.dumps(document, separators=(",", ":")).encode())

    def open(self, blob: bytes | None) -> dict[str, Any]:
        """Decrypt what :meth:`seal` produced; ``None`` opens to an empty mapping."""
        if not blob:
            return {}
        try:
            data: dict[str, Any] = json.loads(self._fernet.decrypt(bytes(blob)))
        except InvalidToken as exc:
            raise DecryptionError("stored secrets cannot be decrypted with this key") from exc
        return data
