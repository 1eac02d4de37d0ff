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
from sqlalchemy.engine import CursorResult, Row
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


# Keys per DELETE of a purge (a bound on the statement's parameters).
_PURGE_BATCH = 500

# Each retry follows a purge that another replica committed in between: never more than one
# in practice (a purge deletes only rows whose window ended, and ours just started afresh).
_PURGED_RETRIES = 3


def _claimed(until: datetime | None, now: datetime) -> bool:
    return until is not None and until > now


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
            row = self._locked(counters, key, now)
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
            conditions = [
                # The windows `consume` would start afresh anyway.
                or_(
                    columns.window_started_at <= now - window,
                    columns.window_started_at >= now + window,
                ),
                or_(
                    columns.signin_cooldown_until.is_(None),
                    columns.signin_cooldown_until <= now,
                ),
            ]
            if counters is _ACCOUNTS:
                # Nor an account whose sign-in is with Garmin: its claim would be lost.
                conditions.append(
                    or_(
                        columns.sign_in_claimed_until.is_(None),
                        columns.sign_in_claimed_until <= now,
                    )
                )
            # Locked in key order, passing over rows a Login holds: one DELETE would lock them
            # in the table's physical order, which crosses a Login's (the user's row, then
            # the account's digests in order; two of them while the keyring holds two keys),
            # and PostgreSQL would abort one of the two as a deadlock. What is skipped is
            # in use, and the next pass purges it.
            stale = list(
                self.session.scalars(
                    select(counters.key)
                    .where(*conditions)
                    .order_by(counters.key)
                    .with_for_update(skip_locked=True)
                )
            )
            for start in range(0, len(stale), _PURGE_BATCH):
                result = self.session.execute(
                    delete(counters.table).where(
                        counters.key.in_(stale[start : start + _PURGE_BATCH])
                    )
                )
                deleted += cast(CursorResult[Any], result).rowcount or 0
        return deleted

    def claim_sign_in(self, keys: SignInKeys, now: datetime, until: datetime) -> bool:
        rows = [(key, self._locked(_ACCOUNTS, key, now)) for key in keys.accounts]
        if any(_claimed(row.sign_in_claimed_until, now) for _, row in rows):
            return False
        for key, _row in rows:
            self.session.execute(
                update(_ACCOUNTS.table)
                .where(_ACCOUNTS.key == key)
                .values(sign_in_claimed_until=until)
            )
        return True

    def release_sign_in(self, keys: SignInKeys, until: datetime) -> None:
        claimed = _ACCOUNTS.table.c.sign_in_claimed_until
        for key in keys.accounts:
            self.session.execute(
                update(_ACCOUNTS.table)
                .where(_ACCOUNTS.key == key, claimed == until)
                .values(sign_in_claimed_until=None)
            )

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
            # Locked, not only ensured: the insert locks nothing, and housekeeping could purge
            # the stale row it found before the UPDATE, which would then set no cooldown.
            self._locked(counters, key, now)
            ends = counters.table.c.signin_cooldown_until
            self.session.execute(
                update(counters.table)
                .where(counters.key == key, or_(ends.is_(None), ends < until))
                .values(signin_cooldown_until=until)
            )

    def _locked(self, counters: _Counters, key: str, now: datetime) -> Row[Any]:
        """The row of `key`, created when missing and locked for this transaction."""
        for _ in range(_PURGED_RETRIES):
            self._ensure_row(counters, key, now)
            row = self.session.execute(
                select(counters.table).where(counters.key == key).with_for_update()
            ).first()
            # None: housekeeping's purge deleted the stale row between our insert (which
            # found it, and locks nothing) and our lock; a new one starts a fresh window.
            if row is not None:
                return row
        raise RuntimeError(f"the {counters.table.name} row vanished {_PURGED_RETRIES} times")

    def _ensure_row(self, counters: _Counters, key: str, now: datetime) -> None:
        insert_ignoring_conflict(
            self.session,
            counters.table,
            {counters.key.name: key, "window_started_at": now, "attempts": 0},
        )
