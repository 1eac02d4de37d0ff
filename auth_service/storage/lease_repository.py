"""Every lease query against garmin_authentication_state.

Each grant, renewal, release and report is ONE conditional UPDATE ... WHERE <rule> RETURNING:
the database checks the rule and applies the change atomically, so several service replicas
on one PostgreSQL (row locks) and threads of one process on SQLite (single writer) can never
both win. A statement that matched no row means "the rule did not hold"; the service layer
turns that into the matching domain error. (ReportRefreshed first reads which user a lease
names, because the ciphertext is sealed for that user's row; its UPDATE re-checks both.)

A lease is *live* when its lease_id matches, it has not expired (`lease_expires_at > now`)
and the session is still ACTIVE. A row whose lease expired is free even though lease_id is
still set: the next grant overwrites it, which kills the old lease_id for good.

Repositories never commit: the service layer owns transactions. On SQLite every
transaction takes the write lock at BEGIN (auth_service.storage.database), so a read that
precedes a write in the same transaction cannot go stale.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Update, and_, case, literal, or_, select, update
from sqlalchemy.orm import Session, aliased

from auth_service.domain.models import SessionState
from auth_service.storage.models import GarminAuthenticationState, UTCDateTime

State = GarminAuthenticationState

# Column values that end a lease. Release, invalidation, and the session service's
# login/import/delete all use these, so "no lease" looks the same whoever ended it.
# fencing_token is deliberately absent: it only ever grows.
ENDED_LEASE: dict[str, Any] = {
    "lease_id": None,
    "lease_holder": None,
    "lease_acquired_at": None,
    "lease_expires_at": None,
}

# ORM-enabled UPDATE ... RETURNING: skip the in-session synchronisation (RETURNING already
# brings the new row) and overwrite any copy of the row the session already holds.
_RETURNING_OPTIONS: dict[str, Any] = {"synchronize_session": False, "populate_existing": True}
_READ_OPTIONS: dict[str, Any] = {"populate_existing": True}


@dataclass(frozen=True, repr=False)
class SealedSession:
    """Tokens sealed for one user's row (SecretBox.seal_tokens) and their OAuth2 expiry."""

    user_id: str
    ciphertext: bytes
    access_token_expires_at: datetime

    def __repr__(self) -> str:
        return f"SealedSession(user_id={self.user_id!r}, <sealed>)"


def lease_is_free(now: datetime) -> ColumnElement[bool]:
    """Nobody holds a live lease on the row at `now` (never leased, released or expired)."""
    return or_(State.lease_expires_at.is_(None), State.lease_expires_at <= now)


def lease_is_live(lease_id: str, now: datetime) -> ColumnElement[bool]:
    """The row is held by exactly this lease, which has not expired, on an ACTIVE session."""
    return and_(
        State.lease_id == lease_id,
        State.lease_expires_at > now,
        State.state == SessionState.ACTIVE,
    )


def _grant_values(
    lease_id: str, holder: str, now: datetime, expires_at: datetime
) -> dict[str, Any]:
    # The fencing token grows in the same statement that grants: no two grants can ever
    # share a token, and a later grant always sees a larger one.
    return {
        "lease_id": lease_id,
        "lease_holder": holder,
        "lease_acquired_at": now,
        "lease_expires_at": expires_at,
        "fencing_token": State.fencing_token + 1,
        "updated_at": now,
    }


class LeaseRepository:
    """Lease queries on one SQLAlchemy session (one transaction of the service layer)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # --- reads -------------------------------------------------------------------------

    def find(self, user_id: str) -> GarminAuthenticationState | None:
        """The user's row as it is now (used to explain why a grant was refused)."""
        return self.session.get(State, user_id, populate_existing=True)

    def find_by_lease(self, lease_id: str, now: datetime) -> GarminAuthenticationState | None:
        """The row a live lease holds, if the lease is live at `now`."""
        stmt = select(State).where(lease_is_live(lease_id, now))
        return self.session.execute(stmt, execution_options=_READ_OPTIONS).scalars().one_or_none()

    # --- grants ------------------------------------------------------------------------

    def grant(
        self, user_id: str, *, lease_id: str, holder: str, now: datetime, expires_at: datetime
    ) -> GarminAuthenticationState | None:
        """Lease the user's ACTIVE session if no live lease holds it; None when refused."""
        stmt = (
            update(State)
            .where(State.user_id == user_id, State.state == SessionState.ACTIVE)
            .where(lease_is_free(now))
            .values(_grant_values(lease_id, holder, now, expires_at))
        )
        return self._returning(stmt)

    def grant_next(
        self,
        *,
        lease_id: str,
        holder: str,
        now: datetime,
        expires_at: datetime,
        due_before: datetime,
    ) -> GarminAuthenticationState | None:
        """Lease the most overdue free ACTIVE session; None when nothing is due.

        One statement: UPDATE ... WHERE user_id = (SELECT ... LIMIT 1 FOR UPDATE SKIP LOCKED).
        On PostgreSQL the subquery locks the chosen row and skips rows another replica is
        granting right now, so concurrent callers each get a different user without a table
        lock (a row whose lease was granted and committed meanwhile fails the re-check and the
        next candidate is taken). SQLite has no row locks and SQLAlchemy omits the clause
        there: the statement runs under SQLite's single write lock, which serialises callers.
        """
        candidate = aliased(State)
        due = (
            select(candidate.user_id)
            .where(
                candidate.state == SessionState.ACTIVE,
                or_(candidate.lease_expires_at.is_(None), candidate.lease_expires_at <= now),
                or_(
                    candidate.last_sync_attempt_at.is_(None),
                    candidate.last_sync_attempt_at < due_before,
                ),
                or_(candidate.last_synced_at.is_(None), candidate.last_synced_at < due_before),
            )
            # Never synced first, then the oldest sync; user_id makes the order total.
            .order_by(candidate.last_synced_at.asc().nulls_first(), candidate.user_id)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        stmt = (
            update(State)
            .where(State.user_id == due, State.state == SessionState.ACTIVE)
            .where(lease_is_free(now))
            .values(_grant_values(lease_id, holder, now, expires_at))
        )
        return self._returning(stmt)

    # --- the holder's calls ----------------------------------------------------------

    def renew(
        self, lease_id: str, *, now: datetime, expires_at: datetime
    ) -> GarminAuthenticationState | None:
        """Move a live lease's expiry to `expires_at`; None when the lease is dead."""
        stmt = (
            update(State)
            .where(lease_is_live(lease_id, now))
            .values(lease_expires_at=expires_at, updated_at=now)
        )
        return self._returning(stmt)

    def release(
        self, lease_id: str, *, now: datetime, synced_through: datetime | None
    ) -> GarminAuthenticationState | None:
        """End a live lease, recording the sync attempt (and success); None when dead."""
        values: dict[str, Any] = {**ENDED_LEASE, "last_sync_attempt_at": now, "updated_at": now}
        if synced_through is not None:
            new = literal(synced_through, UTCDateTime())
            values["last_synced_at"] = now
            # synced_through never moves backwards: a late, shorter sync keeps the old mark.
            values["synced_through"] = case(
                (or_(State.synced_through.is_(None), State.synced_through < new), new),
                else_=State.synced_through,
            )
        stmt = update(State).where(lease_is_live(lease_id, now)).values(values)
        return self._returning(stmt)

    def end_lease(self, lease_id: str, *, now: datetime) -> GarminAuthenticationState | None:
        """End a live lease without recording anything else; None when it is dead."""
        stmt = (
            update(State)
            .where(lease_is_live(lease_id, now))
            .values({**ENDED_LEASE, "updated_at": now})
        )
        return self._returning(stmt)

    def store_refreshed(
        self,
        lease_id: str,
        *,
        sealed: SealedSession,
        now: datetime,
        expected_version: int | None = None,
    ) -> GarminAuthenticationState | None:
        """Store refreshed tokens under a live lease; None when the lease is dead.

        The tokens are sealed for one user's row, so the row must still be that user's.
        With `expected_version` (central refresh) the row must also still hold the session
        version the tokens were refreshed from, so an import that landed meanwhile wins.
        """
        stmt = (
            update(State)
            .where(lease_is_live(lease_id, now), State.user_id == sealed.user_id)
            .values(
                session_ciphertext=sealed.ciphertext,
                session_version=State.session_version + 1,
                access_token_expires_at=sealed.access_token_expires_at,
                last_validated_at=now,
                updated_at=now,
            )
        )
        if expected_version is not None:
            stmt = stmt.where(State.session_version == expected_version)
        return self._returning(stmt)

    def invalidate(
        self,
        lease_id: str,
        *,
        now: datetime,
        reason: str,
        expected_version: int | None = None,
    ) -> GarminAuthenticationState | None:
        """Mark the session AUTH_EXPIRED, wipe its secrets, end the lease; None when dead."""
        stmt = (
            update(State)
            .where(lease_is_live(lease_id, now))
            .values(
                {
                    **ENDED_LEASE,
                    "state": SessionState.AUTH_EXPIRED,
                    "session_ciphertext": None,
                    "access_token_expires_at": None,
                    "session_version": State.session_version + 1,
                    "invalidated_reason": reason,
                    "invalidated_at": now,
                    "updated_at": now,
                }
            )
        )
        if expected_version is not None:
            stmt = stmt.where(State.session_version == expected_version)
        return self._returning(stmt)

    # --- plumbing ----------------------------------------------------------------------

    def _returning(self, stmt: Update) -> GarminAuthenticationState | None:
        result = self.session.execute(stmt.returning(State), execution_options=_RETURNING_OPTIONS)
        return result.scalars().one_or_none()
