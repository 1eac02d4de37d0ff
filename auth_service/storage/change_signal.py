"""Waking the change stream's followers: implements auth_service.domain.change_ports.ChangeSignal.

Every backend: this replica's own commits that appended to the change log wake its followers
(SqlStore's `on_changes`). PostgreSQL: one listener thread per replica holds a connection of
its own that LISTENs on the channel the change log NOTIFYs at commit, so a change made on any
replica wakes every replica's followers. The log stays the truth: a lost notification (the
listener reconnecting) only delays a follower until its next poll.
"""

from __future__ import annotations

import logging
import threading

import psycopg
import psycopg.conninfo
from sqlalchemy import Engine

from auth_service.storage.change_log import NOTIFY_CHANNEL

log = logging.getLogger(__name__)
# A dropped listener connection is retried after this long.
RECONNECT_SECONDS = 2.0
LISTENER_CONNECT_TIMEOUT_SECONDS = 5


class LocalChangeSignal:
    """A generation counter and a condition: wake() bumps it, wait() waits for a bump."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._generation = 0

    def generation(self) -> int:
        with self._condition:
            return self._generation

    def wait(self, seen: int, timeout: float) -> None:
        with self._condition:
            self._condition.wait_for(lambda: self._generation != seen, timeout)

    def wake(self) -> None:
        with self._condition:
            self._generation += 1
            self._condition.notify_all()

    def start(self) -> LocalChangeSignal:
        """Nothing to start."""
        return self

    def close(self) -> None:
        """Nothing to release."""


class ListeningChangeSignal(LocalChangeSignal):
    """LocalChangeSignal, also woken by PostgreSQL notifications from every replica."""

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        # The keyword parameters the engine's own connections get (host, user, password,
        # dbname, the URL's query options) as a quoted key=value string, never the URL
        # rendered back: libpq's URI parser refuses a password with a space in it, which
        # SQLAlchemy's URL accepts.
        _, params = engine.dialect.create_connect_args(engine.url)
        params = {k: v for k, v in params.items() if isinstance(v, str | int)}
        params.setdefault("connect_timeout", LISTENER_CONNECT_TIMEOUT_SECONDS)
        self._conninfo = psycopg.conninfo.make_conninfo("", **params)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="change-listener", daemon=True)

    def start(self) -> ListeningChangeSignal:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)

    def _listen(self) -> None:
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    # Changes may have been missed while not listening: followers re-read.
                    self.wake()
                    while not self._stopping.is_set():
                        if any(True for _ in conn.notifies(timeout=1.0, stop_after=1)):
                            self.wake()
            # Only the type is logged: driver messages can echo connection parameters. Any
            # failure: an exception escaping would end the thread (and print its traceback,
            # unredacted), leaving the replica deaf to the others' changes for good.
            except Exception as exc:  # noqa: BLE001 - see above
                log.warning("change listener lost the database (%s); retrying", type(exc).__name__)
                self._stopping.wait(RECONNECT_SECONDS)


def change_signal_for(engine: Engine) -> LocalChangeSignal:
    """The signal for the engine's backend (start() it with the server)."""
    if engine.dialect.name == "postgresql":
        return ListeningChangeSignal(engine)
    return LocalChangeSignal()
