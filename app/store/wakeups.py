"""Beat's wake-up call: ``LISTEN`` on the channel poll-now notifies (:mod:`app.store.schedule`).

A module of its own so that only beat loads psycopg's driver for it: the API notifies
through its SQLAlchemy session (psycopg added about 10 MB to the API's RSS).
"""

from __future__ import annotations

import logging
import time

import psycopg

from app.store.schedule import DUE_CHANNEL

log = logging.getLogger(__name__)

#: After the listening connection fails, how long beat ticks without one before it tries
#: again; a try against an unreachable server costs a tick up to its 2 s connect timeout.
RELISTEN_AFTER_S = 30.0
#: Early wakes come at most this often: a stream of poll-nows (many tenants, or one in a
#: loop within its API rate) costs beat one claim per gap, not one per call.
MIN_WAKE_GAP_S = 0.05


class DueWakeups:
    """Beat's wake-up call: a connection of its own, listening on :data:`DUE_CHANNEL`.

    :meth:`wait` sleeps until the next tick or until someone made an instance due, whichever
    comes first. Without the connection (PostgreSQL unreachable) it sleeps the whole time,
    and so it does in effect behind a pooler in transaction mode, where notifications never
    arrive: ticks still claim every due row, a poll-now only waits for the next one.
    """

    def __init__(self, libpq_url: str) -> None:
        self.url = libpq_url
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._retry_at = 0.0
        self._woken_at = -MIN_WAKE_GAP_S

    def wait(self, timeout_s: float) -> bool:
        """``True`` when woken by a notification before ``timeout_s`` ran out."""
        deadline = time.monotonic() + timeout_s
        hold = min(self._woken_at + MIN_WAKE_GAP_S - time.monotonic(), timeout_s)
        if hold > 0:
            time.sleep(hold)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        conn = self._connection()
        if conn is None:
            time.sleep(max(deadline - time.monotonic(), 0.0))
            return False
        try:
            woken = any(True for _ in conn.notifies(timeout=remaining, stop_after=1))
            if woken:  # one claim answers every notification that came with it
                for _ in conn.notifies(timeout=0):
                    pass
                self._woken_at = time.monotonic()
        except psycopg.Error as exc:
            log.warning("listening for poll-now failed (%s): ticks only", type(exc).__name__)
            self.close()
            self._retry_at = time.monotonic() + RELISTEN_AFTER_S
            time.sleep(max(deadline - time.monotonic(), 0.0))
            return False
        return woken

    def _connection(self) -> psycopg.Connection[tuple[object, ...]] | None:
        if self._conn is None and time.monotonic() >= self._retry_at:
            conn = None
            try:
                conn = psycopg.connect(self.url, autocommit=True, connect_timeout=2)
                conn.execute(f"LISTEN {DUE_CHANNEL}")
            except psycopg.Error as exc:
                if conn is not None:
                    conn.close()
                log.warning("cannot listen for poll-now (%s): ticks only", type(exc).__name__)
                self._retry_at = time.monotonic() + RELISTEN_AFTER_S
                return None
            self._conn = conn
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:  # already broken: nothing to give back
                pass
