"""The SQLAlchemy store: implements auth_service.domain.repositories.Store.

One transaction per `transaction()` block (committed when it ends, rolled back when it
raises), its repositories bound to it. The composition root builds one SqlStore per replica.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import cached_property
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session, sessionmaker

from auth_service.storage.audit_repository import SqlAuditRepository
from auth_service.storage.challenge_repository import SqlChallengeRepository
from auth_service.storage.change_log import SqlChangeLog, entry_rows
from auth_service.storage.lease_repository import SqlLeaseRepository
from auth_service.storage.limit_repository import SqlGarminLimitRepository
from auth_service.storage.refresh_repository import SqlRefreshRepository
from auth_service.storage.secrets import SecretBox
from auth_service.storage.session_repository import SqlSessionRepository
from auth_service.storage.throttle_repository import SqlThrottleRepository
from auth_service.storage.trail_writer import write_trail
from auth_service.storage.webhook_cursor import SqlWebhookCursor

_TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(:key)")


class SqlTransaction:
    """The repositories of one open transaction (built when first used).

    It runs on a Core connection (auth_service.storage.executor); the repositories that load
    and change ORM objects share an ORM session joined to the connection's transaction, which
    is flushed before the commit and never commits or rolls back by itself."""

    def __init__(self, connection: Connection, box: SecretBox) -> None:
        self._connection = connection
        self._box = box

    @cached_property
    def _orm(self) -> Session:
        # rollback_only: the session never ends the connection's transaction; the store does.
        return Session(
            bind=self._connection, join_transaction_mode="rollback_only", expire_on_commit=False
        )

    @cached_property
    def sessions(self) -> SqlSessionRepository:
        return SqlSessionRepository(self._connection, self._box)

    @cached_property
    def challenges(self) -> SqlChallengeRepository:
        return SqlChallengeRepository(self._connection, self._box)

    @cached_property
    def throttle(self) -> SqlThrottleRepository:
        return SqlThrottleRepository(self._orm)

    @cached_property
    def leases(self) -> SqlLeaseRepository:
        return SqlLeaseRepository(self._connection, self.sessions, self.audit_events)

    @cached_property
    def refreshes(self) -> SqlRefreshRepository:
        return SqlRefreshRepository(self._connection, self.sessions)

    @cached_property
    def audit_events(self) -> SqlAuditRepository:
        return SqlAuditRepository(self._connection)

    @cached_property
    def limits(self) -> SqlGarminLimitRepository:
        return SqlGarminLimitRepository(self._orm)

    @cached_property
    def changes(self) -> SqlChangeLog:
        return SqlChangeLog(self._connection)

    @cached_property
    def webhook_cursor(self) -> SqlWebhookCursor:
        return SqlWebhookCursor(self._orm)

    def before_commit(self) -> bool:
        """Insert this transaction's audit events and the change-log entries of the changes
        they record (with the status the transaction leaves), as the last statement before
        COMMIT. True when there were entries: they are numbered once committed
        (storage.change_sequencer)."""
        orm = self.__dict__.get("_orm")
        if isinstance(orm, Session):
            orm.flush()
        leases = self.__dict__.get("leases")
        recorded = isinstance(leases, SqlLeaseRepository) and leases.recorded_changes
        events = self.__dict__.get("audit_events")
        if not isinstance(events, SqlAuditRepository):
            return recorded
        entries = entry_rows(events.pending_changes, self.sessions)
        write_trail(self._connection, events.take_unwritten(), entries)
        return recorded or bool(entries)

    def has_unwritten(self) -> bool:
        """Whether anything waits to be written at commit (audit events, ORM changes)."""
        orm = self.__dict__.get("_orm")
        if isinstance(orm, Session) and (orm.new or orm.dirty or orm.deleted):
            return True
        events = self.__dict__.get("audit_events")
        return isinstance(events, SqlAuditRepository) and events.has_unwritten()

    def close(self) -> None:
        """Let go of the ORM session, if one was opened (the connection's transaction is
        the store's to end)."""
        orm = self.__dict__.get("_orm")
        if isinstance(orm, Session):
            orm.close()


class SqlStore:
    """Transactions on one database, with the secret box that seals what they store."""

    def __init__(
        self,
        db: sessionmaker[Session],
        box: SecretBox,
        on_changes: Callable[[], None] | None = None,
    ) -> None:
        """`on_changes` is called after a commit that appended to the change log (it wakes
        this replica's sequencer, which numbers the entries and then wakes the followers)."""
        # Units of work run on Core connections of the sessions' engine.
        self._engine: Engine = db.kw["bind"]
        self._box = box
        self._on_changes = on_changes

    def transaction(self) -> AbstractContextManager[SqlTransaction]:
        return self._unit()

    def single_write(self) -> AbstractContextManager[SqlTransaction]:
        """PostgreSQL: the statement runs in autocommit (the lease statements carry their
        trail in one data-modifying CTE, so the write is whole without a transaction block:
        one round trip instead of three). SQLite records the trail with statements of its
        own, so there it is an ordinary transaction."""
        return self._unit(autocommit=self._engine.dialect.name == "postgresql")

    def exclusive(self, name: str) -> AbstractContextManager[SqlTransaction | None]:
        """PostgreSQL: a transaction-scoped advisory lock, tried without waiting, so of the
        replicas that try at once exactly one gets it (and it is released at commit, or when
        a crashed replica's connection closes). SQLite: one process, and BEGIN IMMEDIATE
        already serialises every writer."""
        return self._unit(lock=name)

    @contextmanager
    def _unit(self, *, lock: str | None = None, autocommit: bool = False) -> Iterator[Any]:
        """One transaction on a Core connection; with `lock`, None when another replica holds
        the advisory lock of that name; with `autocommit`, no transaction block at all, for
        a unit whose one statement writes everything (single_write)."""
        with self._connection(autocommit) as connection:
            if lock is not None and connection.dialect.name == "postgresql":
                key = {"key": advisory_lock_key(lock)}
                if not connection.execute(_TRY_LOCK, key).scalar_one():
                    yield None
                    return
            transaction = SqlTransaction(connection, self._box)
            try:
                yield transaction
                # In autocommit, anything left to write would commit apart from the
                # statement: a bug.
                if autocommit and transaction.has_unwritten():
                    raise RuntimeError("a single-write unit wrote more than its statement")
                changed = transaction.before_commit()
            finally:
                transaction.close()
        if changed:
            self._after_changes()

    def _connection(self, autocommit: bool) -> AbstractContextManager[Connection]:
        """A pooled connection in a transaction committed when the block ends, or in
        autocommit."""
        if autocommit:
            return _autocommitted(self._engine)
        return self._engine.begin()

    def _after_changes(self) -> None:
        """The entries just committed wait for their numbers: wake this replica's sequencer
        (auth_service.storage.change_sequencer)."""
        if self._on_changes is not None:
            self._on_changes()


@contextmanager
def _autocommitted(engine: Engine) -> Iterator[Connection]:
    """A pooled PostgreSQL connection in autocommit for the block, put back out of it.

    Switched on the driver's connection, not with SQLAlchemy's isolation_level option, which
    reads and restores the isolation level through the dialect at every checkout and return:
    34-58 against 25-35 us of CPU per unit (a one-off loop of 20,000 empty units per variant,
    five rounds side by side; docs/PERFORMANCE_LOG.md, twenty-eighth session). A
    connection that cannot leave autocommit (broken, or inside a transaction) never returns
    to the pool: a later unit on it would commit each statement on its own. The pool also
    refuses one that comes back in autocommit (storage.database)."""
    with engine.connect() as connection:
        driver: Any = connection.connection.driver_connection  # psycopg.Connection
        driver.autocommit = True
        try:
            yield connection
        finally:
            try:
                driver.autocommit = False
            except Exception:  # noqa: BLE001 - any failure: the connection is not reused
                connection.invalidate()


def advisory_lock_key(name: str) -> int:
    """A stable signed 64-bit key for `name` (PostgreSQL advisory locks take a bigint)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
