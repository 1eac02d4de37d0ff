"""Queries for sessions, MFA challenges and the login throttle.

Repositories never commit: the service layer owns every transaction. Lease queries live in
lease_repository.py. Rows that are changed after being read are read `FOR UPDATE` (PostgreSQL;
SQLite serialises writers itself), so concurrent replicas never lose an update.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import case, delete, exists, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.orm import Session

from auth_service.domain.models import SessionState
from auth_service.storage.models import (
    Base,
    GarminAuthenticationState,
    GarminLoginThrottle,
    GarminMfaChallenge,
)


def _insert_ignoring_conflict(session: Session, model: type[Base], values: dict[str, Any]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING on either backend (a racing replica may insert first)."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(insert(model).values(**values).on_conflict_do_nothing())


def _rowcount(result: Result[Any]) -> int:
    """Rows a DML statement touched (DML results are always CursorResults)."""
    return cast(CursorResult[Any], result).rowcount or 0


class SessionRepository:
    """The garmin_authentication_state rows."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, user_id: str, *, for_update: bool = False) -> GarminAuthenticationState | None:
        query = select(GarminAuthenticationState).where(
            GarminAuthenticationState.user_id == user_id
        )
        if for_update:
            query = query.with_for_update()
        return self.session.scalars(query).one_or_none()

    def get_or_create_for_update(self, user_id: str, now: datetime) -> GarminAuthenticationState:
        """The user's row, locked; created NOT_CONNECTED when the user is new."""
        _insert_ignoring_conflict(
            self.session,
            GarminAuthenticationState,
            {
                "user_id": user_id,
                "state": SessionState.NOT_CONNECTED,
                "session_version": 0,
                "fencing_token": 0,
                "created_at": now,
                "updated_at": now,
            },
        )
        row = self.get(user_id, for_update=True)
        assert row is not None  # inserted above or by a racing replica; rows are never deleted
        return row

    def list_page(
        self, *, after_user_id: str | None, state: SessionState | None, limit: int
    ) -> list[GarminAuthenticationState]:
        """Up to `limit` rows ordered by user_id (keyset pagination: stable under inserts)."""
        query = select(GarminAuthenticationState).order_by(GarminAuthenticationState.user_id)
        if after_user_id is not None:
            query = query.where(GarminAuthenticationState.user_id > after_user_id)
        if state is not None:
            query = query.where(GarminAuthenticationState.state == state)
        return list(self.session.scalars(query.limit(limit)))

    def settle_abandoned_mfa(self, now: datetime, user_id: str | None = None) -> int:
        """MFA_PENDING rows whose challenge is gone fall back to what they were before.

        A row is MFA_PENDING only while it holds no working session, so the fallback is
        AUTH_EXPIRED when the session had been invalidated, NOT_CONNECTED otherwise.
        """
        live_challenge = exists().where(
            GarminMfaChallenge.user_id == GarminAuthenticationState.user_id,
            GarminMfaChallenge.expires_at > now,
        )
        statement = (
            update(GarminAuthenticationState)
            .where(GarminAuthenticationState.state == SessionState.MFA_PENDING, ~live_challenge)
            .values(
                state=_fallback_state(),
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        if user_id is not None:
            statement = statement.where(GarminAuthenticationState.user_id == user_id)
        return _rowcount(self.session.execute(statement))


def _fallback_state() -> Any:
    return case(
        (GarminAuthenticationState.invalidated_at.is_not(None), SessionState.AUTH_EXPIRED.value),
        else_=SessionState.NOT_CONNECTED.value,
    )


class ChallengeRepository:
    """Pending MFA challenges."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get_for_update(self, challenge_id_sha256: str) -> GarminMfaChallenge | None:
        query = (
            select(GarminMfaChallenge)
            .where(GarminMfaChallenge.challenge_id_sha256 == challenge_id_sha256)
            .with_for_update()
        )
        return self.session.scalars(query).one_or_none()

    def delete_for_user(self, user_id: str) -> None:
        self.session.execute(
            delete(GarminMfaChallenge).where(GarminMfaChallenge.user_id == user_id)
        )

    def add(self, challenge: GarminMfaChallenge) -> None:
        self.session.add(challenge)
        self.session.flush()

    def delete(self, challenge: GarminMfaChallenge) -> None:
        self.session.delete(challenge)
        self.session.flush()

    def delete_expired(self, now: datetime) -> int:
        result = self.session.execute(
            delete(GarminMfaChallenge).where(GarminMfaChallenge.expires_at <= now)
        )
        return _rowcount(result)

    def count_live(self, now: datetime) -> int:
        query = select(func.count()).where(GarminMfaChallenge.expires_at > now)
        return int(self.session.scalar(query) or 0)


class ThrottleRepository:
    """Per-user login counters, shared by every replica."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def consume(
        self, user_id: str, now: datetime, *, limit: int, window: timedelta
    ) -> timedelta | None:
        """Count one login attempt; returns how long to wait instead when over the limit."""
        _insert_ignoring_conflict(
            self.session,
            GarminLoginThrottle,
            {"user_id": user_id, "window_started_at": now, "attempts": 0},
        )
        row = self.session.scalars(
            select(GarminLoginThrottle)
            .where(GarminLoginThrottle.user_id == user_id)
            .with_for_update()
        ).one()
        elapsed = now - row.window_started_at
        # A window that started "after" our time is the same window: replicas agree on time
        # only to within milliseconds, and our time was read before we waited for this row.
        # Only a start a whole window ahead (a clock that was badly wrong) begins a new one.
        if elapsed >= window or elapsed <= -window:
            row.window_started_at, row.attempts = now, 0
        if row.attempts >= limit:
            return row.window_started_at + window - now
        row.attempts += 1
        return None

    def purge_stale(self, now: datetime, window: timedelta) -> int:
        result = self.session.execute(
            delete(GarminLoginThrottle).where(
                or_(
                    GarminLoginThrottle.window_started_at <= now - window,
                    GarminLoginThrottle.window_started_at > now,
                )
            )
        )
        return _rowcount(result)
