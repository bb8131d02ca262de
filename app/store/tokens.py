"""An instance's provider tokens as the refresh reads and writes them (``instances``).

The refresh (:class:`app.services.tokens.InstanceTokens`) is the entry point and owns
each transaction; these functions run on the poll worker's asyncpg connections (the
worker's only database client) and never commit. The blobs stay sealed here: opening
them is the caller's business (only the refresh needs the client secret).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.store import Conn

# No row lock: the refresh calls the provider between this read and the write, and a
# lock (with its connection) held across that call would stall a PATCH and the poll
# path's pool for up to the provider timeout. Workers are serialized by the refresh
# lease; everything else (a PATCH re-authorizing) is caught by the version check below.
_READ = "SELECT tokens, token_version, secrets FROM instances WHERE id = $1"
# Compare-and-set on token_version: a PATCH or another refresh that stored tokens since
# they were read wins, and this write matches no row.
_STORE = """
    UPDATE instances SET tokens = $3, token_version = $2 + 1, valid = true
    WHERE id = $1 AND token_version = $2
"""
_MARK_INVALID = "UPDATE instances SET valid = false WHERE id = $1"


@dataclass(frozen=True)
class SealedTokens:
    """The stored tokens and configuration secrets, both still sealed, and their version."""

    tokens: bytes | None
    version: int
    secrets: bytes | None


async def read_tokens(conn: Conn, instance_id: int) -> SealedTokens | None:
    """The instance's sealed tokens (``tokens`` is ``None`` once it is deleted), or ``None``."""
    row = await conn.fetchrow(_READ, instance_id)
    if row is None:
        return None
    return SealedTokens(row[0], int(row[1]), row[2])


async def store_tokens(conn: Conn, instance_id: int, version: int, sealed: bytes) -> bool:
    """Store refreshed tokens if they are still at ``version``; ``False`` when they moved."""
    status: str = await conn.execute(_STORE, instance_id, version, sealed)
    return status == "UPDATE 1"


async def mark_invalid(conn: Conn, instance_id: int) -> None:
    """The provider refused the grant: the instance needs a new authorization."""
    await conn.execute(_MARK_INVALID, instance_id)
