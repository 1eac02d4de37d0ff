"""Numbering the change log's committed entries in the background, one pass after another
(auth_service.storage.change_log explains the passes).

Every replica runs one sequencer thread. It wakes when this replica committed entries (the
change signal), when another replica's pass NOTIFYed (PostgreSQL), and every poll interval,
and runs passes until nothing is left to number, then wakes the followers. Writers never wait
for it; followers run a pass themselves before each read, so an entry never waits longer than
a follower's poll for its number, whatever happened to the replica that wrote it.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import Session, sessionmaker

from auth_service.storage.change_log import SEQUENCE_BATCH, SqlChangeLog
from auth_service.storage.change_signal import LocalChangeSignal

log = logging.getLogger(__name__)


def sequence_all(db: sessionmaker[Session]) -> int:
    """Passes until a pass numbers less than a full batch; how many entries were numbered."""
    total, numbered = 0, SEQUENCE_BATCH
    while numbered == SEQUENCE_BATCH:
        with db.begin() as session:
            numbered = SqlChangeLog(session).sequence_pending()
        total += numbered
    return total


class ChangeSequencer:
    """The background thread of one replica."""

    def __init__(
        self, db: sessionmaker[Session], signal: LocalChangeSignal, poll_seconds: float
    ) -> None:
        self._db = db
        self._signal = signal
        self._poll = poll_seconds
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="change-sequencer", daemon=True)

    def start(self) -> ChangeSequencer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._signal.wake()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            seen = self._signal.generation()
            try:
                if sequence_all(self._db):
                    # SQLite has no NOTIFY: this replica's followers learn of it here.
                    self._signal.wake()
                    continue
            # The database may be down for a while; the next wake-up tries again. Only the
            # type is logged: driver messages can echo connection parameters.
            except Exception as exc:  # noqa: BLE001
                log.warning("change log not numbered (%s); retrying", type(exc).__name__)
            self._signal.wait(seen, self._poll)
