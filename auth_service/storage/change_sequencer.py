"""Numbering the change log's committed entries in the background, one pass after another
(auth_service.storage.change_log explains the passes).

Every replica runs one sequencer thread. It wakes when this replica committed entries, and
every poll interval (so the entries of a replica that died right after its commit get their
numbers from another), gives the commits of the next few milliseconds the chance to join, runs
passes until nothing is left to number, then wakes this replica's followers (PostgreSQL's
NOTIFY wakes every replica's). Writers never wait for it; a watch runs a pass itself when it
starts, so what it replays includes everything committed before.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from auth_service.storage.change_log import SEQUENCE_BATCH, SequencePass, SqlChangeLog
from auth_service.storage.change_signal import LocalChangeSignal

log = logging.getLogger(__name__)
# How long a woken sequencer lets further commits gather before its pass: a follower sees a
# change this much later, and a busy replica runs at most one pass per this interval (a pass
# costs about 0.4 ms of CPU however few entries it numbers: at 10 ms, a replica serving lease
# RPCs flat out spent 8% of its CPU on passes).
COALESCE_SECONDS = 0.025


def sequence_all(db: sessionmaker[Session]) -> SequencePass:
    """Passes until a pass numbers less than a full batch: how many entries were numbered,
    and whether the last pass found another replica's pass under way."""
    # On Core connections, like the units of work: a pass loads no ORM object, and an ORM
    # session costs a quarter of an empty pass's CPU (0.54 vs 0.41 ms).
    engine: Engine = db.kw["bind"]
    total, done = 0, SequencePass(SEQUENCE_BATCH)
    while done.numbered == SEQUENCE_BATCH:
        with engine.begin() as connection:
            done = SqlChangeLog(connection).sequence_pass()
        total += done.numbered
    return SequencePass(total, busy=done.busy)


class ChangeSequencer:
    """The background thread of one replica.

    It waits on `committed` (this replica's commits that appended entries), and wakes
    `followers` after every pass that numbered some. Its own NOTIFY and other replicas' do not
    wake it: they mean "positions moved", which is the followers' business. A pass that found
    another replica's pass under way is tried again after COALESCE_SECONDS, since that pass
    may have started before our entries were committed."""

    def __init__(
        self,
        db: sessionmaker[Session],
        committed: LocalChangeSignal,
        followers: LocalChangeSignal,
        poll_seconds: float,
        coalesce_seconds: float = COALESCE_SECONDS,
    ) -> None:
        self._db = db
        self._committed = committed
        self._followers = followers
        self._poll = poll_seconds
        self._coalesce = coalesce_seconds
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="change-sequencer", daemon=True)

    def start(self) -> ChangeSequencer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._committed.wake()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            seen = self._committed.generation()
            busy = False
            try:
                done = sequence_all(self._db)
                busy = done.busy
                if done.numbered:
                    # SQLite has no NOTIFY: this replica's followers learn of it here.
                    self._followers.wake()
            # The database may be down for a while; the next wake-up tries again. Only the
            # type is logged: driver messages can echo connection parameters.
            except Exception as exc:  # noqa: BLE001
                log.warning("change log not numbered (%s); retrying", type(exc).__name__)
            if not busy:
                # Commits made during the pass have moved the generation: no wait then.
                self._committed.wait(seen, self._poll)
            # Let the commits of the next few milliseconds join the pass: under load one
            # pass numbers many entries instead of one pass per commit.
            self._stopping.wait(self._coalesce)
