"""The webhook cursor (garmin_webhook_cursor): how far webhooks were delivered, and the claim
that lets one replica at a time deliver them. Implements
auth_service.domain.change_ports.WebhookCursorRepository. Never commits.

The claim is a lease on the one row: a replica takes it when it is free, expired or its own,
and every write of the cursor is conditioned on still holding it, so a replica whose claim
ran out (it hung, or lost the database) can never move the cursor back or forth.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, or_, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from auth_service.domain.change_ports import WebhookClaim
from auth_service.storage.change_log import head_of
from auth_service.storage.models import GarminWebhookCursor
from auth_service.storage.upsert import insert_ignoring_conflict

Cursor = GarminWebhookCursor
_ROW_ID = 1


class SqlWebhookCursor:
    """The one webhook cursor row on one SQLAlchemy session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def claim(self, replica: str, *, now: datetime, until: datetime) -> WebhookClaim | None:
        """Take (or extend) the claim; None while another replica's claim is live.

        The first claim ever creates the row at the log's head: webhooks deliver the changes
        after they were switched on, not the whole history."""
        if self.session.get(Cursor, _ROW_ID) is None:
            insert_ignoring_conflict(
                self.session,
                cast(Table, Cursor.__table__),
                {"id": _ROW_ID, "delivered_through": head_of(self.session), "attempts": 0},
            )
        row = self.session.execute(
            update(Cursor)
            .where(
                Cursor.id == _ROW_ID,
                or_(
                    Cursor.claimed_by.is_(None),
                    Cursor.claimed_until <= now,
                    Cursor.claimed_by == replica,
                ),
            )
            .values(claimed_by=replica, claimed_until=until)
            .returning(Cursor.delivered_through, Cursor.attempts, Cursor.next_attempt_at)
        ).first()
        if row is None:
            return None
        return WebhookClaim(
            delivered_through=row.delivered_through,
            attempts=row.attempts,
            next_attempt_at=row.next_attempt_at,
        )

    def delivered(self, replica: str, position: int) -> bool:
        """Everything up to `position` was accepted; False when the claim was lost."""
        return self._held_update(
            replica,
            delivered_through=position,
            attempts=0,
            next_attempt_at=None,
        )

    def failed(self, replica: str, *, attempts: int, next_attempt_at: datetime) -> bool:
        return self._held_update(replica, attempts=attempts, next_attempt_at=next_attempt_at)

    def release(self, replica: str) -> None:
        self._held_update(replica, claimed_by=None, claimed_until=None)

    def _held_update(self, replica: str, **values: Any) -> bool:
        result = self.session.execute(
            update(Cursor)
            .where(Cursor.id == _ROW_ID, Cursor.claimed_by == replica)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return (cast(CursorResult[Any], result).rowcount or 0) == 1
