"""OAuth 2.0 with the provider's token endpoint (Keap: ``POST /token``, form-encoded)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import aiohttp

from app.domain.rows import utcnow


class OAuthError(Exception):
    """Base class; ``message`` is safe to show to the API caller (no secrets)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class GrantRejected(OAuthError):
    """The provider refused the code or refresh token (4xx): retrying the same grant won't help."""


class ProviderUnavailable(OAuthError):
    """Timeout, connection error, 5xx or a malformed answer: the grant may work later."""


@dataclass(frozen=True)
class TokenSet:
    """Tokens as the provider issued them."""

    access_token: str
    refresh_token: str | None
    expires_at: datetime | None

    def to_secrets(self) -> dict[str, Any]:
        """The shape stored (encrypted) in ``Instance.secrets``."""
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
        }


def authorize_url(base: str, client_id: str, redirect_uri: str, state: str | None) -> str:
    """The consent page URL a user is sent to (Open Connectors ``/oauth/url``)."""
    params = {
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "response_type": "code",
        "scope": "full",
    }
    if state:
        params["state"] = state
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}{urlencode(params)}"


def _provider_message(status: int, text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("error_description", "message", "error"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value
        fault = body.get("fault")
        if isinstance(fault, dict) and isinstance(fault.get("faultstring"), str):
            return str(fault["faultstring"])
    return f"HTTP {status}"


def _parse_tokens(text: str) -> TokenSet:
    try:
        body = json.loads(text)
        access = body["access_token"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ProviderUnavailable("provider token endpoint returned a malformed answer") from exc
    if not isinstance(access, str) or not access:
        raise ProviderUnavailable("provider token endpoint returned no access_token")
    expires_in = body.get("expires_in")
    expires_at = None
    if isinstance(expires_in, int | float) and expires_in > 0:
        expires_at = utcnow() + timedelta(seconds=float(expires_in))
    refresh = body.get("refresh_token")
    return TokenSet(access, refresh if isinstance(refresh, str) else None, expires_at)


async def request_token(
    session: aiohttp.ClientSession,
    token_url: str,
    client_id: str,
    client_secret: str,
    form: dict[str, str],
    timeout: float = 15.0,
) -> TokenSet:
    """POST a grant to the token endpoint; client credentials go in HTTP Basic and the form."""
    basic = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
    data = {**form, "client_id": client_id, "client_secret": client_secret}
    try:
        async with session.post(
            token_url,
            data=data,
            headers={"Authorization": f"Basic {basic}", "Accept": "application/json"},
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as resp:
            text = await resp.text()
            status = resp.status
    except TimeoutError as exc:
        raise ProviderUnavailable("provider token endpoint timed out") from exc
    except aiohttp.ClientError as exc:
        raise ProviderUnavailable(
            f"provider token endpoint unreachable ({type(exc).__name__})"
        ) from exc
    if 400 <= status < 500:
        raise GrantRejected(_provider_message(status, text))
    if status != 200:
        raise ProviderUnavailable(f"provider token endpoint answered {status}")
    return _parse_tokens(text)


async def exchange_code(
    session: aiohttp.ClientSession,
    token_url: str,
    client_id: str,
    client_secret: str,
    code: str,
    redirect_uri: str,
    timeout: float = 15.0,
) -> TokenSet:
    """Trade an authorization grant code for tokens."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    return await request_token(session, token_url, client_id, client_secret, form, timeout)


async def refresh_tokens(
    session: aiohttp.ClientSession,
    token_url: str,
    client_id: str,
    client_secret: str,
    refresh_token: str,
    timeout: float = 15.0,
) -> TokenSet:
    """Trade a refresh token for a new token set (the refresh token rotates)."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return await request_token(session, token_url, client_id, client_secret, form, timeout)
