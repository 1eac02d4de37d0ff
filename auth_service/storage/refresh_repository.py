"""Claims on refreshing a session, and the keep-alive's walk over DI sessions.

Implements auth_service.domain.repositories.RefreshRepository. A claim is one conditional
UPDATE ... RETURNING: on PostgreSQL the row lock makes concurrent claimers queue and re-check
the condition after the winner commits (so exactly one gets it); on SQLite one writer at a
time does the same. Storing what a refresh brought is the session rows' own REFRESHED change
(auth_service.storage.session_rows), which also ends the claim and says when keep-alive may
pick the session again (keepalive_not_before). Never commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Integer,
    Row,
    Update,
    and_,
    bindparam,
    case,
    literal,
    or_,
    select,
    update,
)

from auth_service.domain.models import GarminTokens, SessionKind
from auth_service.domain.repositories import KeepAliveCandidate
from auth_service.domain.views import SessionRow
from auth_service.storage import session_rows as rows
from auth_service.storage.executor import Executor
from auth_service.storage.models import UTCDateTime
from auth_service.storage.session_repository import SqlSessionRepository

T = rows.T
_UNTIL = bindparam("p_until", type_=UTCDateTime())
_DIES_BEFORE = bindparam("p_dies_before", type_=UTCDateTime())
_LAST_STRETCH = bindparam("p_last_stretch", type_=UTCDateTime())
_CLAIM_ID = bindparam("p_claim_id", type_=T.c.refresh_claim_id.type)
_LIMIT = bindparam("p_limit", type_=Integer())

_UNCLAIMED = or_(T.c.refresh_claimed_until.is_(None), T.c.refresh_claimed_until <= rows.NOW)
# Not held back by keep-alive (refreshed lately without leaving the window, failed lately,
# its account cooling: keepalive_not_before).
_KEEPALIVE_DUE = or_(T.c.keepalive_not_before.is_(None), T.c.keepalive_not_before <= rows.NOW)
_CLAIM = (
    update(T)
    .where(
        T.c.user_id == rows.USER_ID,
        T.c.session_version == rows.VERSION,
        T.c.state == rows.ACTIVE,
        _UNCLAIMED,
    )
    .values(refresh_claim_id=_CLAIM_ID, refresh_claimed_until=_UNTIL)
    .returning(*T.c)
)
# Keep-alive leaves leased sessions to their holder's grant.
_CLAIM_UNLEASED = _CLAIM.where(rows.FREE)
# Keep-alive's own claim also honours its hold-back as the row has it now: another replica's
# pass, overlapping this one (a pass outlasts the interval while Garmin times out), may have
# failed on the session and held it back since this pass chose its batch.
_CLAIM_KEEPALIVE = _CLAIM_UNLEASED.where(_KEEPALIVE_DUE)
# A lease holder's refresh (its grant's, RefreshLease): only while its lease is live, so a
# holder whose lease was taken over meanwhile never rotates the new holder's refresh token.
_CLAIM_HELD = _CLAIM.where(rows.LIVE)
_RELEASE = (
    update(T)
    .where(T.c.user_id == rows.USER_ID, T.c.refresh_claim_id == _CLAIM_ID)
    .values(rows.CLAIM_ENDED)
)
# Only the session keep-alive held back: a newer one is due on its own terms.
_KEEPALIVE_HELD = update(T).where(
    T.c.user_id == rows.USER_ID, T.c.session_version == rows.VERSION, T.c.state == rows.ACTIVE
)
_DEFER_KEEPALIVE = _KEEPALIVE_HELD.values(rows.KEEPALIVE_DEFERRED)

# Keep-alive: ACTIVE DI rows (the partial index ix_garmin_authentication_state_keepalive,
# over (keepalive_failures, refresh_token_expires_at)), nobody leasing or refreshing them now,
# and not held back. Every hold-back keep-alive writes ends before the refresh token dies
# (half its time left at most, a minute at least: policies.keepalive_not_before,
# keepalive_retry_at), except an account's cooldown, during which the gate refuses its
# refresh anyway: honouring it never lets a session die that keep-alive could have refreshed.
_ACTIVE_DI_FREE = and_(
    T.c.state == rows.ACTIVE,
    T.c.session_kind == SessionKind.DI_OAUTH2,
    rows.FREE,
    _UNCLAIMED,
    _KEEPALIVE_DUE,
)
_CANDIDATE_COLUMNS = (
    T.c.user_id,
    T.c.session_version,
    T.c.refresh_token_expires_at,
    T.c.keepalive_failures,
)
_NEVER_FAILED = T.c.keepalive_failures == 0
_FAILED = T.c.keepalive_failures > 0
_SOONEST_FIRST = (T.c.refresh_token_expires_at, T.c.user_id)
_IN_LAST_STRETCH = T.c.refresh_token_expires_at < _LAST_STRETCH
_PAST_LAST_STRETCH = and_(
    T.c.refresh_token_expires_at >= _LAST_STRETCH, T.c.refresh_token_expires_at < _DIES_BEFORE
)
# First the sessions in their refresh token's last stretch (policies.keepalive_last_stretch),
# soonest first whatever their failed attempts: one that met a passing 503 would otherwise
# wait behind every session that never failed and die. Two queries, each a range of the index
# walked in its order (failures = 0, and the few rows with failures > 0), merged.
_LAST_STRETCH_NEVER_FAILED = (
    select(*_CANDIDATE_COLUMNS)
    .where(_ACTIVE_DI_FREE, _NEVER_FAILED, _IN_LAST_STRETCH)
    .order_by(*_SOONEST_FIRST)
    .limit(_LIMIT)
)
_LAST_STRETCH_FAILED = (
    select(*_CANDIDATE_COLUMNS)
    .where(_ACTIVE_DI_FREE, _FAILED, _IN_LAST_STRETCH)
    .order_by(*_SOONEST_FIRST)
    .limit(_LIMIT)
)
# Then sessions keep-alive never failed to refresh: a session Garmin keeps refusing (an
# account blocked for days, a refused client id, a key left out of the ring) goes behind
# them after its first failed attempt until its last stretch, so no number of such sessions
# starves a healthy one. Among those, unknown expiries first (tokens imported as given: they
# may die any day), then soonest first: two queries rather than one NULLS FIRST order, so
# each is a range of the index (keepalive_failures = 0, refresh_token_expires_at) walked in
# its order.
_UNKNOWN_EXPIRY = (
    select(*_CANDIDATE_COLUMNS)
    .where(_ACTIVE_DI_FREE, _NEVER_FAILED, T.c.refresh_token_expires_at.is_(None))
    .order_by(T.c.user_id)
    .limit(_LIMIT)
)
_DYING = (
    select(*_CANDIDATE_COLUMNS)
    .where(_ACTIVE_DI_FREE, _NEVER_FAILED, _PAST_LAST_STRETCH)
    .order_by(*_SOONEST_FIRST)
    .limit(_LIMIT)
)
# Then the ones that failed: fewest failed attempts first, each count in the same order. Only
# rows whose keep-alive failed since their tokens last changed are in this range of the index
# (keepalive_failures > 0), so sorting the due ones among them stays small.
_FAILED_BEFORE = (
    select(*_CANDIDATE_COLUMNS)
    .where(
        _ACTIVE_DI_FREE,
        _FAILED,
        or_(T.c.refresh_token_expires_at.is_(None), _PAST_LAST_STRETCH),
    )
    .order_by(
        T.c.keepalive_failures,
        T.c.refresh_token_expires_at.is_not(None),
        *_SOONEST_FIRST,
    )
    .limit(_LIMIT)
)


def _fail_keepalive(until_after: Sequence[datetime]) -> Update:
    """One more failed attempt, and the hold-back for the count the row holds as the
    statement writes it (until_after[n] after n earlier failed attempts, the last for any
    more): both in one statement, whatever another replica counted since the batch was
    chosen. Built per call: its CASE has a branch per count the hold-back still grows at
    (6 with the defaults: 1 h doubled up to a day)."""
    *steps, beyond = until_after
    hold_back: ColumnElement[Any] = literal(beyond, UTCDateTime())
    if steps:  # the same whatever the count (a dying session: half its time left) otherwise
        hold_back = case(
            {n: literal(until, UTCDateTime()) for n, until in enumerate(steps)},
            value=T.c.keepalive_failures,
            else_=hold_back,
        )
    return _KEEPALIVE_HELD.values(rows.keepalive_failed(hold_back)).returning(
        T.c.keepalive_not_before
    )


def _candidate(row: Row[Any, Any, Any, Any]) -> KeepAliveCandidate:
    return KeepAliveCandidate(
        row.user_id, row.session_version, row.refresh_token_expires_at, row.keepalive_failures
    )


class SqlRefreshRepository:
    """Refresh claims on one SQLAlchemy session (one transaction of the service layer)."""

    def __init__(self, session: Executor, sessions: SqlSessionRepository) -> None:
        self.session = session
        self._sessions = sessions

    def claim(  # noqa: PLR0913 - keyword-only: the claim and whose conditions it obeys
        self,
        user_id: str,
        *,
        version: int,
        claim_id: str,
        now: datetime,
        until: datetime,
        unleased: bool = False,
        held_by: str | None = None,
        keepalive: bool = False,
    ) -> SessionRow | None:
        params = {
            "p_user_id": user_id,
            "p_version": version,
            "p_claim_id": claim_id,
            "p_now": now,
            "p_until": until,
        }
        statement = _CLAIM_KEEPALIVE if keepalive else _CLAIM_UNLEASED if unleased else _CLAIM
        if held_by is not None:
            statement, params["p_lease_id"] = _CLAIM_HELD, held_by
        row: Row[Any] | None = self.session.execute(statement, params).first()
        return cast("SessionRow | None", row)

    def release(self, user_id: str, *, claim_id: str) -> None:
        self.session.execute(_RELEASE, {"p_user_id": user_id, "p_claim_id": claim_id})

    def store_rotated(
        self,
        user_id: str,
        *,
        version: int,
        tokens: GarminTokens,
        now: datetime,
        keepalive_not_before: datetime | None,
        replaced: SessionRow,
    ) -> SessionRow | None:
        # Every refresh the service stores (grants, RefreshLease, GetStatus, keep-alive,
        # imports' joins): one statement, written once.
        return self._sessions.store_rotated(
            user_id,
            version=version,
            tokens=tokens,
            now=now,
            keepalive_not_before=keepalive_not_before,
            replaced=replaced,
        )

    def defer_keepalive(self, user_id: str, *, version: int, until: datetime) -> None:
        self.session.execute(
            _DEFER_KEEPALIVE,
            {"p_user_id": user_id, "p_version": version, "p_keepalive_not_before": until},
        )

    def fail_keepalive(
        self, user_id: str, *, version: int, until_after: Sequence[datetime]
    ) -> datetime | None:
        held: datetime | None = self.session.execute(
            _fail_keepalive(until_after), {"p_user_id": user_id, "p_version": version}
        ).scalar_one_or_none()
        return held

    def keepalive_candidates(
        self, *, now: datetime, dies_before: datetime, last_stretch: datetime, limit: int
    ) -> list[KeepAliveCandidate]:
        params: dict[str, Any] = {
            "p_now": now,
            "p_dies_before": dies_before,
            # Never past the window: the last stretch is the window's soonest part.
            "p_last_stretch": min(last_stretch, dies_before),
            "p_limit": limit,
        }
        # Queries run per pass: the last stretch's two, then the others in turn while the
        # batch is not full (2 to 5).
        found = sorted(
            (
                _candidate(row)
                for query in (_LAST_STRETCH_NEVER_FAILED, _LAST_STRETCH_FAILED)
                for row in self.session.execute(query, params)
            ),
            key=lambda candidate: (candidate.refresh_token_expires_at, candidate.user_id),
        )[:limit]
        for query in (_UNKNOWN_EXPIRY, _DYING, _FAILED_BEFORE):
            if len(found) >= limit:
                break
            params["p_limit"] = limit - len(found)
            found.extend(_candidate(row) for row in self.session.execute(query, params))
        return found
