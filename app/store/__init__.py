"""SQL lives here: functions that take a connection, run statements and never commit.

The caller (a request handler, a task, a command) owns the transaction.
"""

from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:  # beat imports its statements from here and never loads asyncpg
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

# What asyncpg-based stores take: a pooled connection or a plain one (both run the same
# prepared statements).
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
