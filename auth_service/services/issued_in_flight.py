"""Sessions Garmin is issuing to this replica, from the call that issues them until they are
stored: a rotated pair (a refresh), a token file's refreshed pair, a sign-in's tokens.

Each exists only in this replica's memory until its commit lands, and what it replaces is
spent at Garmin (a rotated-away refresh token, a single-use ticket): a replica that exits
meanwhile loses it. A graceful stop waits for them (`wait_idle`), past the grace period the
calls themselves get, within a bound.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from auth_service.domain.errors import ReplicaStopping


class IssuedInFlight:
    """Counts the sessions in flight between Garmin and the database, for one replica."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._count = 0
        self._closed = False

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """One session in flight for the block: from its Garmin call to its commit. Enter
        it before asking Garmin (and before claiming a refresh): once the replica is
        stopping (close), it raises ReplicaStopping instead, and Garmin is not asked."""
        with self._changed:
            if self._closed:
                raise ReplicaStopping("this replica is stopping; call another")
            self._count += 1
        try:
            yield
        finally:
            with self._changed:
                self._count -= 1
                self._changed.notify_all()

    def close(self) -> None:
        """The replica is stopping: no new session is asked of Garmin (a cancelled call's
        handler still running would otherwise start one that the exit then drops)."""
        with self._changed:
            self._closed = True

    @property
    def count(self) -> int:
        with self._changed:
            return self._count

    def wait_idle(self, timeout: float) -> bool:
        """Wait until none is in flight, for at most `timeout` seconds (False: some still
        are)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True
