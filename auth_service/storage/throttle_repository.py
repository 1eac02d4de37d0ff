"""The login throttle: implements auth_service.domain.repositories.ThrottleRepository.

One counter for a fixed window and one sign-in cooldown after Garmin answered 429, per user
(garmin_login_throttle) and per Garmin account (garmin_signin_account, keyed by the digest
of its email), shared by every replica. Never commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Column, Table, delete, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from auth_service.domain.repositories import LoginLimitReached
from auth_service.domain.signin_accounts import SignInKeys
from auth_service.storage.models import GarminLoginThrottle, GarminSignInAccount
from auth_service.storage.upsert import insert_ignoring_conflict


@dataclass(frozen=True)
class _Counters:
    """One of the two tables of counters, and the column that names whose they are."""

    table: Table
    key: Column[str]


_USERS = _Counters(
    cast(Table, GarminLoginThrottle.__table__), cast(Table, GarminLoginThrottle.__table__).c.user_id
)
_ACCOUNTS = _Counters(
    cast(Table, GarminSignInAccount.__table__),
    cast(Table, GarminSignInAccount.__table__).c.account_digest,
)


def _named(keys: SignInKeys) -> list[tuple[_Counters, str]]:
    """The rows of `keys`, the user's first: every transaction locks them in that order."""
    return [(_USERS, keys.user_id)] + [(_ACCOUNTS, account) for account in keys.accounts]


class SqlThrottleRepository:
    """Login counters and sign-in cooldowns on one SQLAlchemy session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def consume(
        self, keys: SignInKeys, now: datetime, *, limit: int, window: timedelta
    ) -> LoginLimitReached | None:
        counted: list[tuple[_Counters, str, datetime, int]] = []
        reached: LoginLimitReached | None = None
        for counters, key in _named(keys):
            self._ensure_row(counters, key, now)
            row = self.session.execute(
                select(counters.table.c.window_started_at, counters.table.c.attempts)
                .where(counters.key == key)
                .with_for_update()
            ).one()
            started, attempts = row.window_started_at, row.attempts
            elapsed = now - started
            # A window that started "after" our time is the same window: replicas agree on
            # time only to within milliseconds, and our time was read before we waited for
            # this row. Only a start a whole window ahead (a clock that was badly wrong)
            # begins a new one.
            if elapsed >= window or elapsed <= -window:
                started, attempts = now, 0
            if attempts >= limit:
                wait = started + window - now
                if reached is None or wait > reached.wait:
                    reached = LoginLimitReached(wait, by_account=counters is _ACCOUNTS)
            counted.append((counters, key, started, attempts))
        if reached is not None:
            # Nothing reaches Garmin, so nothing is counted: neither row changes.
            return reached
        for counters, key, started, attempts in counted:
            self.session.execute(
                update(counters.table)
                .where(counters.key == key)
                .values(window_started_at=started, attempts=attempts + 1)
            )
        return None

    def purge_stale(self, now: datetime, window: timedelta) -> int:
        deleted = 0
        for counters in (_USERS, _ACCOUNTS):
            columns = counters.table.c
            result = self.session.execute(
                delete(counters.table).where(
                    # The windows `consume` would start afresh anyway.
                    or_(
                        columns.window_started_at <= now - window,
                        columns.window_started_at >= now + window,
                    ),
                    or_(
                        columns.signin_cooldown_until.is_(None),
                        columns.signin_cooldown_until <= now,
                    ),
                )
            )
            deleted += cast(CursorResult[Any], result).rowcount or 0
        return deleted

    def cooldown_until(self, keys: SignInKeys) -> datetime | None:
        ends = [
            end
            for counters, key in _named(keys)
            if (
                end := self.session.scalar(
                    select(counters.table.c.signin_cooldown_until).where(counters.key == key)
                )
            )
            is not None
        ]
        return max(ends, default=None)

    def start_cooldown(self, keys: SignInKeys, until: datetime, now: datetime) -> None:
        for counters, key in _named(keys):
            self._ensure_row(counters, key, now)
            ends = counters.table.c.signin_cooldown_until
            self.session.execute(
                update(counters.table)
                .where(counters.key == key, or_(ends.is_(None), ends < until))
                .values(signin_cooldown_until=until)
            )

    def _ensure_row(self, counters: _Counters, key: str, now: datetime) -> None:
        insert_ignoring_conflict(
            self.session,
            counters.table,
            {counters.key.name: key, "window_started_at": now, "attempts": 0},
        )
