"""The database's clock.

Which clock rules: the DATABASE's. Every replica decides lease expiry, takeovers and MFA
challenge expiry against timestamps that other replicas wrote, so they must agree on "now"
even when their machines' clocks drift apart. Asking the database for every decision would
cost a round trip per RPC; instead `DatabaseClock` measures the offset between this machine
and the database every `resync_seconds` (correcting for half the round trip) and adds it to
the local clock. Replicas then agree to within a few milliseconds plus the drift between
syncs, whatever their own clocks say.

SQLite runs in this process, on this machine's clock, so SystemClock (auth_service.domain.clock)
is the database clock there.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from auth_service.domain.clock import Clock, SystemClock

log = logging.getLogger(__name__)


class DatabaseClock:
    """The database server's clock, read through a periodically measured offset."""

    def __init__(
        self, engine: Engine, *, base: Clock | None = None, resync_seconds: float = 30.0
    ) -> None:
        self._engine = engine
        self._base = base or SystemClock()
        self._resync_seconds = resync_seconds
        self._offset = timedelta(0)
        self._synced_at: float | None = None
        self._lock = threading.Lock()

    @property
    def offset(self) -> timedelta:
        """How far the database's clock is ahead of this machine's (as last measured)."""
        return self._offset

    def now(self) -> datetime:
        synced_at = self._synced_at
        due = synced_at is None or time.monotonic() - synced_at >= self._resync_seconds
        # One thread measures; the others keep the offset they have meanwhile (only the very
        # first reading waits, as there is no offset yet).
        if due and self._lock.acquire(blocking=synced_at is None):
            try:
                self.sync()
            finally:
                self._lock.release()
        return self._base.now() + self._offset

    def sync(self) -> None:
        """Measure the offset now. On failure the last offset stays in force."""
        try:
            with self._engine.connect() as connection:
                before = self._base.now()
                database_now = connection.execute(text("SELECT clock_timestamp()")).scalar_one()
                after = self._base.now()
        except SQLAlchemyError as exc:
            log.warning("database clock not read (%s); keeping offset", type(exc).__name__)
            self._synced_at = time.monotonic()
            return
        self._offset = database_now - (before + (after - before) / 2)
        self._synced_at = time.monotonic()


def clock_for(engine: Engine) -> Clock:
    """The clock that rules for this database."""
    if engine.dialect.name == "postgresql":
        return DatabaseClock(engine)
    return SystemClock()
