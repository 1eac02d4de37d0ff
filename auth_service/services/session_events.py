"""WatchSessionEvents: replay the change log after a cursor, then follow it (issue 16).

A watch reads the log in position order (auth_service.domain.changes), so it sees every
change once, in commit order, whichever replica made it and whichever replica it reads from:
a consumer that reconnects anywhere with its last cursor misses nothing and gets nothing
twice. Between reads it sleeps on the change signal (woken by PostgreSQL's NOTIFY or this
replica's commits) and at most `poll_seconds`. On an idle stream a Heartbeat carries the
position read through, so proxies see traffic and a filtered consumer's cursor moves on.

A watch holds a server thread for its whole life, so a replica serves at most
`max_watchers` at once (TooManyWatchers beyond). Stopping the replica ends every watch with
ReplicaStopping, at once: consumers resume elsewhere from their last cursor.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from auth_service.domain import validation
from auth_service.domain.change_ports import ChangeSignal
from auth_service.domain.changes import (
    ChangeFilter,
    Heartbeat,
    SessionChange,
    StreamSettings,
    parse_cursor,
)
from auth_service.domain.errors import (
    CursorExpired,
    ReplicaStopping,
    StreamDisabled,
    TooManyWatchers,
)
from auth_service.services.unit_of_work import UnitsOfWork

# Entries read per query: a replay of a long log goes out in slices of this many.
READ_BATCH = 200


class Watch:
    """One consumer's stream: iterate for SessionChange and Heartbeat items; cancel() when
    the consumer has gone."""

    def __init__(self, events: SessionEvents, after: int | None, wanted: ChangeFilter) -> None:
        self._events = events
        self._after = after
        self._wanted = wanted
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()
        self._events.signal.wake()

    def __iter__(self) -> Iterator[SessionChange | Heartbeat]:
        events = self._events
        with events.slot():
            with events.uow() as uow:
                uow.changes.sequence_pending(wait=True)
            with events.uow() as uow:
                if self._after is None:
                    after = uow.changes.head()
                else:
                    after = self._after
                    if after > uow.changes.head():
                        # Never issued by this log (a database restored from a backup):
                        # following it would skip every change up to it, unannounced.
                        raise CursorExpired(
                            "this cursor is ahead of the change log (was the database "
                            f"restored?); {_START_AGAIN}"
                        )
            # The first heartbeat tells the consumer where it stands as soon as the stream has
            # caught up with the log: at once from an empty cursor, after the replay otherwise.
            beat_due, caught_up = 0.0, False
            while not self._cancelled.is_set():
                if events.stopping.is_set():
                    raise ReplicaStopping("the replica is stopping; resume from the last cursor")
                seen = events.signal.generation()
                with events.uow() as uow:
                    batch = uow.changes.read_after(after, self._wanted, limit=READ_BATCH)
                if after + 1 < batch.first_kept:
                    # Pruned before this watch read them: at its start, or while a slow
                    # consumer replayed (prune-audit may run at any time).
                    raise CursorExpired(f"changes after this cursor were pruned; {_START_AGAIN}")
                yield from batch.changes
                after = batch.read_through
                now = time.monotonic()
                if batch.changes:
                    if caught_up:
                        beat_due = now + events.settings.heartbeat_seconds
                    if len(batch.changes) == READ_BATCH:
                        continue
                if now >= beat_due:
                    yield Heartbeat(after)
                    beat_due, caught_up = now + events.settings.heartbeat_seconds, True
                wait = min(beat_due - now, events.settings.poll_seconds)
                events.signal.wait(seen, max(wait, 0.0))


_START_AGAIN = "read the statuses with ListSessions and watch from an empty cursor"


class SessionEvents:
    """WatchSessionEvents' use case, and the replica's count of open watches."""

    def __init__(self, uow: UnitsOfWork, signal: ChangeSignal, settings: StreamSettings) -> None:
        self.uow = uow
        self.signal = signal
        self.settings = settings
        self.stopping = threading.Event()
        self._watchers = 0
        self._lock = threading.Lock()

    def watch(self, after_cursor: str, wanted: ChangeFilter) -> Watch:
        """Validated now; replays and follows when iterated."""
        after, violations = parse_cursor(after_cursor, "after_cursor")
        if wanted.user_id is not None:
            violations += validation.check_user_id(wanted.user_id)
        validation.raise_if_any(violations)
        return Watch(self, after, wanted)

    @property
    def watchers(self) -> int:
        with self._lock:
            return self._watchers

    @contextmanager
    def slot(self) -> Iterator[None]:
        if self.settings.max_watchers == 0:
            raise StreamDisabled(
                "this replica serves no change stream (GARMIN_AUTH_MAX_WATCHERS=0); "
                "read the statuses with ListSessions"
            )
        with self._lock:
            if self._watchers >= self.settings.max_watchers:
                raise TooManyWatchers(
                    f"this replica already serves {self.settings.max_watchers} watchers; "
                    "retry later or on another replica"
                )
            self._watchers += 1
        try:
            yield
        finally:
            with self._lock:
                self._watchers -= 1

    def stop(self) -> None:
        """End every watch now (the replica is stopping)."""
        self.stopping.set()
        self.signal.wake()
