"""The SQLAlchemy store: implements auth_service.domain.repositories.Store.

One transaction per `transaction()` block (committed when it ends, rolled back when it
raises), its repositories bound to it. The composition root builds one SqlStore per replica.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from auth_service.storage.audit_repository import SqlAuditRepository
from auth_service.storage.challenge_repository import SqlChallengeRepository
from auth_service.storage.change_log import SqlChangeLog
from auth_service.storage.lease_repository import SqlLeaseRepository
from auth_service.storage.limit_repository import SqlGarminLimitRepository
from auth_service.storage.refresh_repository import SqlRefreshRepository
from auth_service.storage.secrets import SecretBox
from auth_service.storage.session_repository import SqlSessionRepository
from auth_service.storage.throttle_repository import SqlThrottleRepository
from auth_service.storage.webhook_cursor import SqlWebhookCursor

_TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(:key)")


class SqlTransaction:
    """The repositories of one open SQLAlchemy transaction (built when first used)."""

    def __init__(self, session: Session, box: SecretBox) -> None:
        self._session = session
        self._box = box

    @cached_property
    def sessions(self) -> SqlSessionRepository:
        return SqlSessionRepository(self._session, self._box)

    @cached_property
    def challenges(self) -> SqlChallengeRepository:
        return SqlChallengeRepository(self._session, self._box)

    @cached_property
    def throttle(self) -> SqlThrottleRepository:
        return SqlThrottleRepository(self._session)

    @cached_property
    def leases(self) -> SqlLeaseRepository:
        return SqlLeaseRepository(self._session, self.sessions)

    @cached_property
    def refreshes(self) -> SqlRefreshRepository:
        return SqlRefreshRepository(self._session, self.sessions)

    @cached_property
    def audit_events(self) -> SqlAuditRepository:
        return SqlAuditRepository(self._session)

    @cached_property
    def limits(self) -> SqlGarminLimitRepository:
        return SqlGarminLimitRepository(self._session)

    @cached_property
    def changes(self) -> SqlChangeLog:
        return SqlChangeLog(self._session)

    @cached_property
    def webhook_cursor(self) -> SqlWebhookCursor:
        return SqlWebhookCursor(self._session)

    def before_commit(self) -> bool:
        """Append the changes this transaction's audit events recorded to the change log, as
        the last statements before COMMIT (with the status the transaction leaves). True when
        there were any: they are numbered once committed (storage.change_sequencer)."""
        events = self.__dict__.get("audit_events")
        if not isinstance(events, SqlAuditRepository) or not events.pending_changes:
            return False
        self.changes.append(events.pending_changes, self.sessions)
        return True


class SqlStore:
    """Transactions on one database, with the secret box that seals what they store."""

    def __init__(
        self,
        db: sessionmaker[Session],
        box: SecretBox,
        on_changes: Callable[[], None] | None = None,
    ) -> None:
        """`on_changes` is called after a commit that appended to the change log (it wakes
        this replica's followers at once, whatever the backend)."""
        self._db = db
        self._box = box
        self._on_changes = on_changes

    @contextmanager
    def transaction(self) -> Iterator[SqlTransaction]:
        with self._db.begin() as session:
            transaction = SqlTransaction(session, self._box)
            yield transaction
            changed = transaction.before_commit()
        if changed:
            self._after_changes()

    @contextmanager
    def exclusive(self, name: str) -> Iterator[SqlTransaction | None]:
        """PostgreSQL: a transaction-scoped advisory lock, tried without waiting, so of the
        replicas that try at once exactly one gets it (and it is released at commit, or when
        a crashed replica's connection closes). SQLite: one process, and BEGIN IMMEDIATE
        already serialises every writer."""
        with self._db.begin() as session:
            if session.get_bind().dialect.name == "postgresql":
                taken = session.execute(_TRY_LOCK, {"key": advisory_lock_key(name)}).scalar_one()
                if not taken:
                    yield None
                    return
            transaction = SqlTransaction(session, self._box)
            yield transaction
            changed = transaction.before_commit()
        if changed:
            self._after_changes()

    def _after_changes(self) -> None:
        """The entries just committed wait for their numbers: wake this replica's sequencer
        and followers (auth_service.storage.change_sequencer)."""
        if self._on_changes is not None:
            self._on_changes()


def advisory_lock_key(name: str) -> int:
    """A stable signed 64-bit key for `name` (PostgreSQL advisory locks take a bigint)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
