"""The one way a use case touches storage: a unit of work.

`with self._uow() as uow:` opens one transaction and binds to it, once, what every use case
repeated around it: the time the decision is made at (`uow.now`), the repositories, and the
audit trail (`uow.audit.record(...)` writes an event in that very transaction, so an event
exists if and only if its change was committed; auth_service.domain.audit has the rules).

"Now" is read before the transaction opens: reading the database's clock may need a
connection of its own, which must never wait for one held by a transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from auth_service.domain import audit
from auth_service.domain.audit import AuditedRpc, LeaseRef, NewAuditEvent, Outcome
from auth_service.domain.change_ports import ChangeLogRepository, WebhookCursorRepository
from auth_service.domain.clock import Clock
from auth_service.domain.models import LeaseView, SessionStatusView
from auth_service.domain.repositories import (
    AuditRepository,
    ChallengeRepository,
    GarminLimitRepository,
    LeaseRepository,
    RefreshRepository,
    SessionRepository,
    Store,
    ThrottleRepository,
    Transaction,
)


class AuditTrail:
    """Writes audit events in one transaction, at its time, naming the RPC's caller."""

    def __init__(self, events: AuditRepository, now: datetime) -> None:
        self._events = events
        self._now = now

    def record(
        self,
        rpc: AuditedRpc,
        outcome: Outcome,
        *,
        user_id: str | None,
        lease: LeaseView | LeaseRef | None = None,
        leaves: SessionStatusView | None = None,
        changed: bool | None = None,
    ) -> None:
        """`leaves`: the user's status as this transaction will commit it, when the use case
        holds the row its last change returned (saves reading it back for the change log).
        `changed`: whether this event records a change of the user's session (the change log
        carries those); by default an OK outcome does and a refusal does not. Say it where
        they differ: a session Garmin ended answers an error, a cooldown started changes
        nothing."""
        self._events.add(
            NewAuditEvent(
                occurred_at=self._now,
                caller=audit.caller_name(),
                rpc=rpc.value,
                user_id=user_id,
                outcome_code=outcome.code,
                outcome_reason=outcome.reason,
                lease_id=lease.lease_digest if lease else None,
                fencing_token=lease.fencing_token if lease else None,
            ),
            leaves=leaves,
            changed=changed,
        )

    def record_lease_lost(self, rpc: AuditedRpc, lease_digest: str) -> None:
        """A LEASE_LOST refusal, named by the lease's grant event when the lease was ours.

        A presented lease whose digest no kept event names is not recorded (it may not be
        ours at all, and nothing the caller sends is stored unless the service issued it).
        """
        owner = self._events.lease_owner(lease_digest)
        self.record(
            rpc,
            audit.LEASE_LOST,
            user_id=owner.user_id if owner else None,
            lease=LeaseRef(lease_digest, owner.fencing_token) if owner else None,
        )


class UnitOfWork:
    """One transaction: its time, its repositories and its audit trail."""

    def __init__(self, transaction: Transaction, now: datetime) -> None:
        self.now = now
        self._transaction = transaction
        self.audit = AuditTrail(transaction.audit_events, now)

    @property
    def sessions(self) -> SessionRepository:
        return self._transaction.sessions

    @property
    def challenges(self) -> ChallengeRepository:
        return self._transaction.challenges

    @property
    def throttle(self) -> ThrottleRepository:
        return self._transaction.throttle

    @property
    def leases(self) -> LeaseRepository:
        return self._transaction.leases

    @property
    def refreshes(self) -> RefreshRepository:
        return self._transaction.refreshes

    @property
    def audit_events(self) -> AuditRepository:
        return self._transaction.audit_events

    @property
    def limits(self) -> GarminLimitRepository:
        return self._transaction.limits

    @property
    def changes(self) -> ChangeLogRepository:
        return self._transaction.changes

    @property
    def webhook_cursor(self) -> WebhookCursorRepository:
        return self._transaction.webhook_cursor


class UnitsOfWork:
    """Opens units of work on one store, timed by one clock."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    @contextmanager
    def __call__(self) -> Iterator[UnitOfWork]:
        now = self.clock.now()
        with self.store.transaction() as transaction:
            yield UnitOfWork(transaction, now)

    @contextmanager
    def single_write(self) -> Iterator[UnitOfWork]:
        """A unit whose only write is one self-recording statement (Store.single_write)."""
        now = self.clock.now()
        with self.store.single_write() as transaction:
            yield UnitOfWork(transaction, now)

    def now(self) -> datetime:
        return self.clock.now()
