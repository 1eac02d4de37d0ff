"""The database's clock.

Which clock rules: the DATABASE's. Every replica decides lease expiry, takeovers and MFA
challenge expiry against timestamps that other replicas wrote, so they must agree on "now"
even when their machines' clocks drift apart. Asking the database for every decision would
cost a round trip per RPC; instead `DatabaseClock` reads the database's time every
`resync_seconds` (correcting for half the round trip) and counts forward from that reading on
this machine's monotonic clock, which a step of its wall clock (NTP, an operator) does not
move. Replicas then agree to within a few milliseconds plus the drift between readings,
whatever their own clocks say, and whenever they are stepped. (Adding a measured offset to the
wall clock instead let a step between two readings move the replica's "now" by the whole step:
a replica stepped 5 minutes ahead took over a live lease.)

Until a first reading succeeds (the database unreachable at start), the replica has no
database time: it tells its own machine's time, and tries to read again at most every
`RETRY_SECONDS`, not every `resync_seconds`.

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


# How soon a replica that has never read the database's time tries again.
RETRY_SECONDS = 1.0


class DatabaseClock:
    """The database server's clock: its last reading, counted forward on time.monotonic()."""

    def __init__(
        self, engine: Engine, *, base: Clock | None = None, resync_seconds: float = 30.0
    ) -> None:
        self._engine = engine
        self._base = base or SystemClock()
        self._resync_seconds = resync_seconds
        self._offset = timedelta(0)
        # The database's time at a reading, and time.monotonic() at the same moment.
        self._reading: tuple[datetime, float] | None = None
        self._synced_at: float | None = None  # time.monotonic() of the last attempt
        self._lock = threading.Lock()

    @property
    def offset(self) -> timedelta:
        """How far the database's clock is ahead of this machine's (as last measured)."""
        return self._offset

    def now(self) -> datetime:
        synced_at, reading = self._synced_at, self._reading
        interval = self._resync_seconds if reading is not None else RETRY_SECONDS
        due = synced_at is None or time.monotonic() - synced_at >= interval
        # One thread reads; the others count on from the reading they have meanwhile (only
        # the very first call waits, as there is nothing to count from yet).
        if due and self._lock.acquire(blocking=synced_at is None):
            try:
                self.sync()
            finally:
                self._lock.release()
            reading = self._reading
        if reading is None:
            return self._base.now()
        database_time, at = reading
        return database_time + timedelta(seconds=time.monotonic() - at)

    def sync(self) -> None:
        """Read the database's time now. On failure the last reading stays in force."""
        try:
            with self._engine.connect() as connection:
                before, monotonic_before = self._base.now(), time.monotonic()
                database_now = connection.execute(text("SELECT clock_timestamp()")).scalar_one()
                after, monotonic_after = self._base.now(), time.monotonic()
        except SQLAlchemyError as exc:
            kept = "keeping the last reading" if self._reading else "no reading yet"
            log.warning("database clock not read (%s); %s", type(exc).__name__, kept)
            self._synced_at = time.monotonic()
            return
        self._offset = database_now - (before + (after - before) / 2)
        self._reading = (database_now, (monotonic_before + monotonic_after) / 2)
        self._synced_at = time.monotonic()


def clock_for(engine: Engine) -> Clock:
    """The clock that rules for this database."""
    if engine.dialect.name == "postgresql":
        return DatabaseClock(engine)
    return SystemClock()
