"""OAuth 2.0 authorization-code state of the simulated Keap identity server.

Pure logic with an injectable clock (seconds). Clients are registered on first use: the first
``client_secret`` presented for a ``client_id`` at ``/token`` becomes its secret (unless the
config pre-registers clients); a different secret later is ``invalid_client``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["AccessToken", "OAuthError", "OAuthState", "TokenResponse"]

CODE_TTL_SECONDS = 600.0


class OAuthError(Exception):
    """An OAuth error response: ``status`` and RFC 6749 ``error`` code."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


@dataclass(slots=True)
class _Code:
    client_id: str
    redirect_uri: str
    account: str
    expires_at: float


@dataclass(slots=True)
class AccessToken:
    """What an access token grants."""

    client_id: str
    account: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class TokenResponse:
    access_token: str
    refresh_token: str
    expires_in: int


class OAuthState:
    """Codes, access tokens and rotating refresh tokens."""

    def __init__(
        self,
        token_ttl: float = 86_400.0,
        clients: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.token_ttl = token_ttl
        self.clock = clock
        self._client_secrets: dict[str, str] = dict(clients or {})
        self._fixed_clients = clients is not None and len(clients) > 0
        self._codes: dict[str, _Code] = {}
        self._access: dict[str, AccessToken] = {}
        self._refresh: dict[str, tuple[str, str]] = {}  # token -> (client_id, account)

    def authorize(self, client_id: str, redirect_uri: str, account: str) -> str:
        """Issue a single-use code for ``account``; automatic consent."""
        if not client_id:
            raise OAuthError(400, "invalid_request", "client_id is required")
        if self._fixed_clients and client_id not in self._client_secrets:
            raise OAuthError(401, "invalid_client", "Unknown client_id")
        if not redirect_uri:
            raise OAuthError(400, "invalid_request", "redirect_uri is required")
        self._purge_codes()
        code = secrets.token_urlsafe(18)
        self._codes[code] = _Code(client_id, redirect_uri, account, self.clock() + CODE_TTL_SECONDS)
        return code

    def _purge_codes(self) -> None:
        if len(self._codes) > 10_000:
            now = self.clock()
            for code in [c for c, v in self._codes.items() if v.expires_at <= now]:
                del self._codes[code]

    def _check_client(self, client_id: str | None, client_secret: str | None) -> str:
        if not client_id or not client_secret:
            raise OAuthError(401, "invalid_client", "Client authentication failed")
        known = self._client_secrets.get(client_id)
        if known is None:
            if self._fixed_clients:
                raise OAuthError(401, "invalid_client", "Client authentication failed")
            self._client_secrets[client_id] = client_secret
        elif not secrets.compare_digest(known, client_secret):
            raise OAuthError(401, "invalid_client", "Client authentication failed")
        return client_id

    def _issue(self, client_id: str, account: str) -> TokenResponse:
        access = secrets.token_urlsafe(24)
        refresh = secrets.token_urlsafe(24)
        self._access[access] = AccessToken(client_id, account, self.clock() + self.token_ttl)
        self._refresh[refresh] = (client_id, account)
        return TokenResponse(access, refresh, int(self.token_ttl))

    def exchange_code(
        self,
        client_id: str | None,
        client_secret: str | None,
        code: str | None,
        redirect_uri: str | None,
    ) -> TokenResponse:
        """``grant_type=authorization_code``. The code is consumed even when the call fails."""
        if not code or not redirect_uri:
            raise OAuthError(400, "invalid_request", "code and redirect_uri are required")
        cid = self._check_client(client_id, client_secret)
        grant = self._codes.pop(code, None)
        if grant is None:
            raise OAuthError(400, "invalid_grant", "Invalid authorization code")
        if grant.expires_at <= self.clock():
            raise OAuthError(400, "invalid_grant", "Authorization code expired")
        if grant.client_id != cid:
            raise OAuthError(
                400, "invalid_grant", "Authorization code was issued to another client"
            )
        if grant.redirect_uri != redirect_uri:
            raise OAuthError(400, "invalid_grant", "redirect_uri does not match")
        return self._issue(cid, grant.account)

    def refresh(
        self, client_id: str | None, client_secret: str | None, refresh_token: str | None
    ) -> TokenResponse:
        """``grant_type=refresh_token``; the refresh token rotates (the old one stops working)."""
        if not refresh_token:
            raise OAuthError(400, "invalid_request", "refresh_token is required")
        cid = self._check_client(client_id, client_secret)
        bound = self._refresh.get(refresh_token)
        if bound is None or bound[0] != cid:
            raise OAuthError(400, "invalid_grant", "Invalid Refresh Token")
        del self._refresh[refresh_token]
        return self._issue(cid, bound[1])

    def lookup(self, access_token: str) -> AccessToken | None:
        """The grant of a token, or None if unknown. Expiry is checked by the caller."""
        return self._access.get(access_token)

    def is_expired(self, grant: AccessToken) -> bool:
        return grant.expires_at <= self.clock()

    def expire_tokens(self, account: str | None = None) -> int:
        """Expire every current access token (of ``account``, or all); returns how many."""
        now = self.clock()
        n = 0
        for grant in self._access.values():
            if (account is None or grant.account == account) and grant.expires_at > now:
                grant.expires_at = now
                n += 1
        return n

    def purge_expired(self) -> None:
        """Forget tokens expired more than a day ago (keeps memory bounded in long runs)."""
        horizon = self.clock() - 86_400
        for token in [t for t, g in self._access.items() if g.expires_at < horizon]:
            del self._access[token]
