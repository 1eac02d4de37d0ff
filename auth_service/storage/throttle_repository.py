"""The login throttle: implements auth_service.domain.repositories.ThrottleRepository.

One counter per user for a fixed window, and the user's sign-in cooldown after Garmin
answered 429, shared by every replica. Never commits.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, delete, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from auth_service.storage.models import GarminLoginThrottle
from auth_service.storage.upsert import insert_ignoring_conflict


class SqlThrottleRepository:
    """Per-user login counters on one SQLAlchemy session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def consume(
        self, user_id: str, now: datetime, *, limit: int, window: timedelta
    ) -> timedelta | None:
        self._ensure_row(user_id, now)
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
                # The windows `consume` would start afresh anyway.
                or_(
                    GarminLoginThrottle.window_started_at <= now - window,
                    GarminLoginThrottle.window_started_at >= now + window,
                ),
                or_(
                    GarminLoginThrottle.signin_cooldown_until.is_(None),
                    GarminLoginThrottle.signin_cooldown_until <= now,
                ),
            )
        )
        return cast(CursorResult[Any], result).rowcount or 0

    def cooldown_until(self, user_id: str) -> datetime | None:
        return self.session.scalar(
            select(GarminLoginThrottle.signin_cooldown_until).where(
                GarminLoginThrottle.user_id == user_id
            )
        )

    def start_cooldown(self, user_id: str, until: datetime, now: datetime) -> None:
        self._ensure_row(user_id, now)
        self.session.execute(
            update(GarminLoginThrottle)
            .where(
                GarminLoginThrottle.user_id == user_id,
                or_(
                    GarminLoginThrottle.signin_cooldown_until.is_(None),
                    GarminLoginThrottle.signin_cooldown_until < until,
                ),
            )
            .values(signin_cooldown_until=until)
        )

    def _ensure_row(self, user_id: str, now: datetime) -> None:
        insert_ignoring_conflict(
            self.session,
            cast(Table, GarminLoginThrottle.__table__),
            {"user_id": user_id, "window_started_at": now, "attempts": 0},
        )
