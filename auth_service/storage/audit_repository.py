"""Queries for the audit trail (garmin_audit_event): implements
auth_service.domain.repositories.AuditRepository, plus the deletion prune_audit uses.

Events are inserted by the use cases inside the transaction of the change they record; like
every repository, this one never commits.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, delete, insert, or_, select
from sqlalchemy.engine import CursorResult, Row

from auth_service.domain.audit import OK, AuditEventView, LeaseOwner, NewAuditEvent
from auth_service.domain.changes import PendingChange
from auth_service.domain.lease_ids import lease_ref
from auth_service.domain.models import SessionStatusView
from auth_service.storage.executor import Executor
from auth_service.storage.models import GarminAuditEvent
from auth_service.storage.user_scope import starts_with

Event = GarminAuditEvent
# Built once: every lease grant and release inserts an event, and building the statement per
# call costs more than running it.
EVENTS = cast(Table, Event.__table__)
INSERT_EVENTS = insert(EVENTS)
_EVENT_FIELDS = tuple(field.name for field in dataclasses.fields(NewAuditEvent))


class SqlAuditRepository:
    """Audit events on one SQLAlchemy session (one transaction of the service layer)."""

    def __init__(self, session: Executor) -> None:
        self.session = session
        # The changes of one user's session this transaction's events record, for the change
        # log, written with the events as the transaction's last statement (trail_writer).
        self.pending_changes: list[PendingChange] = []
        # Events recorded but not inserted yet: they go in with the change log's entries, as
        # the transaction's last statement (auth_service.storage.trail_writer), or before
        # anything reads the trail in this transaction.
        self._unwritten: list[dict[str, Any]] = []

    def add(
        self,
        event: NewAuditEvent,
        *,
        leaves: SessionStatusView | None = None,
        changed: bool | None = None,
    ) -> None:
        """Record one event, inserted at the latest right before the commit (a failure still
        rolls the whole transaction back); a change of the session also goes to the change
        log (AuditRepository.add)."""
        self._unwritten.append(_event_values(event))
        if changed is None:
            changed = event.outcome_code == OK.code
        if event.user_id is not None and changed:
            self.pending_changes.append(
                PendingChange(event.user_id, event.rpc, event.occurred_at, status=leaves)
            )

    def add_change(self, user_id: str, rpc: str, occurred_at: datetime) -> None:
        """A change of a user's session that no audit event records (what time alone causes:
        housekeeping's), for the change log alone; its status is read back before the
        commit."""
        self.pending_changes.append(PendingChange(user_id, rpc, occurred_at))

    def has_unwritten(self) -> bool:
        """Whether events or change-log entries wait for the commit."""
        return bool(self._unwritten or self.pending_changes)

    def take_unwritten(self) -> list[dict[str, Any]]:
        """The events not inserted yet, as column values; the caller inserts them."""
        unwritten, self._unwritten = self._unwritten, []
        return unwritten

    def flush(self) -> None:
        """Insert the events recorded so far (before this transaction reads the trail)."""
        unwritten = self.take_unwritten()
        if unwritten:
            self.session.execute(INSERT_EVENTS, unwritten)

    def lease_owner(self, lease_digest: str) -> LeaseOwner | None:
        """The user a lease was granted for (named by its id's digest), if an event of that
        lease is still kept.

        Every grant writes an event carrying its lease id's digest, so this names the user even
        after the lease was released or taken over (until prune_audit removes the grant's
        events).
        """
        self.flush()
        row = self.session.execute(
            select(Event.user_id, Event.fencing_token)
            .where(Event.lease_id == lease_digest, Event.user_id.is_not(None))
            .order_by(Event.id)
            .limit(1)
        ).first()
        if row is None or row.user_id is None:
            return None
        return LeaseOwner(user_id=row.user_id, fencing_token=row.fencing_token)

    def list_page(
        self,
        *,
        user_id: str | None,
        start_time: datetime | None,
        end_time: datetime | None,
        after: tuple[datetime, int] | None,
        oldest_first: bool,
        limit: int,
        user_id_prefix: str | None = None,
    ) -> list[AuditEventView]:
        """Up to `limit` events in (occurred_at, id) order, newest first unless oldest_first.

        Keyset pagination: `after` is the (occurred_at, id) of the previous page's last event.
        """
        self.flush()
        # Core rows, not ORM objects: this repository may run on a Core connection.
        query = select(*EVENTS.c)
        if user_id is not None:
            query = query.where(Event.user_id == user_id)
        if user_id_prefix is not None:
            # Events about no user (a refused lease nobody owns) are nobody's tenant's.
            query = query.where(starts_with(Event.user_id, user_id_prefix))
        if start_time is not None:
            query = query.where(Event.occurred_at >= start_time)
        if end_time is not None:
            query = query.where(Event.occurred_at < end_time)
        if after is not None:
            at, event_id = after
            if oldest_first:
                query = query.where(
                    or_(Event.occurred_at > at, and_(Event.occurred_at == at, Event.id > event_id))
                )
            else:
                query = query.where(
                    or_(Event.occurred_at < at, and_(Event.occurred_at == at, Event.id < event_id))
                )
        if oldest_first:
            query = query.order_by(Event.occurred_at.asc(), Event.id.asc())
        else:
            query = query.order_by(Event.occurred_at.desc(), Event.id.desc())
        return [_view(event) for event in self.session.execute(query.limit(limit))]

    def delete_older_than(self, cutoff: datetime, *, limit: int) -> int:
        """Delete up to `limit` of the oldest events with occurred_at < cutoff; the count."""
        self.flush()
        oldest = (
            select(Event.id)
            .where(Event.occurred_at < cutoff)
            .order_by(Event.occurred_at, Event.id)
            .limit(limit)
        )
        statement = delete(Event).where(Event.id.in_(oldest))
        result = self.session.execute(statement, execution_options={"synchronize_session": False})
        return cast(CursorResult[Any], result).rowcount or 0


def _event_values(event: NewAuditEvent) -> dict[str, Any]:
    """The event's column values (a shallow copy: dataclasses.asdict deep-copies each)."""
    return {name: getattr(event, name) for name in _EVENT_FIELDS}


def _view(row: Row[Any]) -> AuditEventView:
    return AuditEventView(
        event_id=row.id,
        occurred_at=row.occurred_at,
        caller=row.caller,
        rpc=row.rpc,
        user_id=row.user_id,
        outcome_code=row.outcome_code,
        outcome_reason=row.outcome_reason,
        lease_ref=None if row.lease_id is None else lease_ref(row.lease_id),
        fencing_token=row.fencing_token,
    )
