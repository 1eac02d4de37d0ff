"""Garmin's 429s as every replica sees them: implements
auth_service.domain.repositories.GarminLimitRepository. Never commits."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, case, delete, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from auth_service.domain.garmin_limits import AccountLimit, Breaker, GarminEndpoint
from auth_service.storage.models import GarminAccountLimit, GarminEndpointBreaker
from auth_service.storage.upsert import insert_ignoring_conflict

_ACCOUNTS = cast(Table, GarminAccountLimit.__table__)
_BREAKERS = cast(Table, GarminEndpointBreaker.__table__)


# Each retry of claim_call follows a purge another replica committed between our insert and
# our UPDATE: never more than one in practice (a purge deletes only ended rows, and the one
# we insert next claims the call).
_PURGED_RETRIES = 3


def _later(kept: datetime | None, other: datetime) -> datetime:
    return other if kept is None or kept < other else kept


def _rows(result: object) -> int:
    return cast(CursorResult[Any], result).rowcount or 0


class SqlGarminLimitRepository:
    """Account limits and endpoint breakers on one SQLAlchemy session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # --- accounts --------------------------------------------------------------------------

    def account(self, user_id: str) -> AccountLimit | None:
        row = self.session.get(GarminAccountLimit, user_id)
        if row is None:
            return None
        return AccountLimit(
            user_id=row.user_id,
            cooling_until=row.cooling_until,
            endpoint=None if row.endpoint is None else GarminEndpoint(row.endpoint),
            call_claimed_until=row.call_claimed_until,
            sign_in_cooling_until=row.sign_in_cooling_until,
        )

    def start_account_cooldown(
        self, user_id: str, endpoint: GarminEndpoint, until: datetime, now: datetime
    ) -> bool:
        values = {
            "user_id": user_id,
            "endpoint": endpoint.value,
            "cooling_until": until,
            "cooling_started_at": now,
        }
        row = None
        while row is None:
            if insert_ignoring_conflict(self.session, _ACCOUNTS, values):
                return True
            # Locked from here to the commit: two replicas' 429s for one account start one
            # cooldown. None: housekeeping purged the ended row after our insert met it, so
            # the insert is tried again (losing the 429 would let every replica call on).
            row = self.session.scalars(
                select(GarminAccountLimit)
                .where(GarminAccountLimit.user_id == user_id)
                .with_for_update()
            ).one_or_none()
        new = row.cooling_until is None or row.cooling_until <= now
        if new:
            row.cooling_started_at = now
        sign_in = GarminEndpoint.SSO.value
        # Two cooldowns of different reach (services.garmin_gate._cooling_for): the row's
        # main one, and a sign-in's that outlasts it while the main one holds back every
        # call. Neither is shortened nor widened by the other's 429.
        if new or row.cooling_until is None:
            row.cooling_until, row.endpoint = until, endpoint.value
        elif row.endpoint == sign_in and endpoint is not GarminEndpoint.SSO:
            # Every call waits until `until`; sign-ins keep their own, later, end.
            if row.cooling_until > until:
                row.sign_in_cooling_until = _later(row.sign_in_cooling_until, row.cooling_until)
            row.cooling_until, row.endpoint = until, endpoint.value
        elif row.endpoint != sign_in and endpoint is GarminEndpoint.SSO:
            # Sign-ins wait until `until`; every other call only as long as it did.
            if until > row.cooling_until:
                row.sign_in_cooling_until = _later(row.sign_in_cooling_until, until)
        else:
            row.cooling_until = max(row.cooling_until, until)
            if endpoint is GarminEndpoint.CONNECT_API and row.endpoint != sign_in:
                # The Connect API's 429 also holds back the account's leases (their token
                # goes there): named by it, the running cooldown does so until it ends.
                row.endpoint = endpoint.value
        return new

    def claim_call(
        self, user_id: str, now: datetime, until: datetime, *, despite_sign_in_cooldown: bool
    ) -> bool:
        for _ in range(_PURGED_RETRIES):
            if insert_ignoring_conflict(
                self.session, _ACCOUNTS, {"user_id": user_id, "call_claimed_until": until}
            ):
                return True
            if self._claim_existing(user_id, now, until, despite_sign_in_cooldown):
                return True
            # Refused: the account's call is out or a cooldown runs, unless the row is gone.
            # The insert met it but locks nothing: housekeeping may have purged the ended row
            # and committed before our UPDATE, which then matched nothing; try again.
            if self._exists(user_id):
                return False
        # Purged under us every time (never in practice): refused as if a call were out, so
        # the caller asks again in seconds.
        return False

    def _exists(self, user_id: str) -> bool:
        # A query, not Session.get: the identity map may still hold the purged row.
        found = self.session.execute(
            select(_ACCOUNTS.c.user_id).where(_ACCOUNTS.c.user_id == user_id)
        ).first()
        return found is not None

    def _claim_existing(
        self, user_id: str, now: datetime, until: datetime, despite_sign_in_cooldown: bool
    ) -> bool:
        """Claim the call on the account's existing row, if no call is out and no cooldown
        holds it back."""
        limit = GarminAccountLimit
        not_cooling = [limit.cooling_until.is_(None), limit.cooling_until <= now]
        if despite_sign_in_cooldown:
            not_cooling.append(limit.endpoint == GarminEndpoint.SSO.value)
        conditions = [
            limit.user_id == user_id,
            or_(limit.call_claimed_until.is_(None), limit.call_claimed_until <= now),
            or_(*not_cooling),
        ]
        if not despite_sign_in_cooldown:
            conditions.append(
                or_(limit.sign_in_cooling_until.is_(None), limit.sign_in_cooling_until <= now)
            )
        result = self.session.execute(
            update(limit).where(*conditions).values(call_claimed_until=until)
        )
        return _rows(result) == 1

    def release_call(self, user_id: str, claimed_until: datetime) -> None:
        limit = GarminAccountLimit
        self.session.execute(
            update(limit)
            .where(limit.user_id == user_id, limit.call_claimed_until == claimed_until)
            .values(call_claimed_until=None)
        )

    def purge_ended(self, now: datetime) -> int:
        limit = GarminAccountLimit
        result = self.session.execute(
            delete(limit).where(
                and_(
                    or_(limit.cooling_until.is_(None), limit.cooling_until <= now),
                    or_(limit.call_claimed_until.is_(None), limit.call_claimed_until <= now),
                    or_(limit.sign_in_cooling_until.is_(None), limit.sign_in_cooling_until <= now),
                )
            )
        )
        return _rows(result)

    # --- endpoints -------------------------------------------------------------------------

    def breakers(self, endpoints: tuple[GarminEndpoint, ...]) -> list[Breaker]:
        rows = self.session.scalars(
            select(GarminEndpointBreaker).where(
                GarminEndpointBreaker.endpoint.in_([e.value for e in endpoints])
            )
        )
        return [_breaker(row) for row in rows]

    def count_rate_limited(self, endpoint: GarminEndpoint, now: datetime, window: timedelta) -> int:
        insert_ignoring_conflict(
            self.session,
            _BREAKERS,
            {"endpoint": endpoint.value, "window_started_at": now, "rate_limited_calls": 0},
        )
        row = self.session.scalars(
            select(GarminEndpointBreaker)
            .where(GarminEndpointBreaker.endpoint == endpoint.value)
            .with_for_update()
        ).one()
        elapsed = now - row.window_started_at
        # Replicas agree on time only to within milliseconds: a window that starts a little
        # "after" our time is the current one.
        if elapsed >= window or elapsed <= -window:
            row.window_started_at, row.rate_limited_calls = now, 0
        row.rate_limited_calls += 1
        return row.rate_limited_calls

    def open_breaker(self, endpoint: GarminEndpoint, until: datetime) -> None:
        breaker = GarminEndpointBreaker
        # A later end wins: the 429 of a call admitted before the breaker opened (without a
        # Retry-After: the default wait) must not cut short the hour Garmin asked for.
        later = case((breaker.open_until > until, breaker.open_until), else_=until)
        self.session.execute(
            update(breaker)
            .where(breaker.endpoint == endpoint.value)
            .values(open_until=later, probe_until=None)
        )

    def claim_probe(self, endpoint: GarminEndpoint, now: datetime, until: datetime) -> bool:
        breaker = GarminEndpointBreaker
        result = self.session.execute(
            update(breaker)
            .where(
                breaker.endpoint == endpoint.value,
                breaker.open_until <= now,
                or_(breaker.probe_until.is_(None), breaker.probe_until <= now),
            )
            .values(probe_until=until)
        )
        return _rows(result) == 1

    def close_breaker(self, endpoint: GarminEndpoint, probe_until: datetime) -> None:
        # Named by the probe's claim, as release_call is by the call's: a probe that ran out
        # while Garmin kept it must not close a breaker a newer probe's 429 opened again
        # (open_breaker ends every probe).
        self.session.execute(
            update(GarminEndpointBreaker)
            .where(
                GarminEndpointBreaker.endpoint == endpoint.value,
                GarminEndpointBreaker.probe_until == probe_until,
            )
            .values(open_until=None, probe_until=None, rate_limited_calls=0)
        )

    def release_probe(self, endpoint: GarminEndpoint, probe_until: datetime) -> None:
        self.session.execute(
            update(GarminEndpointBreaker)
            .where(
                GarminEndpointBreaker.endpoint == endpoint.value,
                GarminEndpointBreaker.probe_until == probe_until,
            )
            .values(probe_until=None)
        )


def _breaker(row: GarminEndpointBreaker) -> Breaker:
    return Breaker(
        endpoint=GarminEndpoint(row.endpoint),
        window_started_at=row.window_started_at,
        rate_limited_calls=row.rate_limited_calls,
        open_until=row.open_until,
        probe_until=row.probe_until,
    )
