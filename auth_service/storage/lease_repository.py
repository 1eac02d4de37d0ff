"""Every lease query against garmin_authentication_state.

Each grant, renewal, release and report is ONE conditional UPDATE ... WHERE <rule> RETURNING:
the database checks the rule and applies the change atomically, so several service replicas
on one PostgreSQL (row locks) and threads of one process on SQLite (single writer) can never
both win. A statement that matched no row means "the rule did not hold"; the service layer
turns that into the matching domain error. (ReportRefreshed first reads which user a lease
names, because the ciphertext is sealed for that user's row; its UPDATE re-checks both.)

The lease_id column holds the SHA-256 digest of the lease id, never the id: every method
takes the digest (auth_service.domain.lease_ids), which the service layer computes from what
the holder presents.

A lease is *live* when its lease_id matches, it has not expired (`lease_expires_at > now`)
and the session is still ACTIVE. A row whose lease expired is free even though lease_id is
still set: the next grant overwrites it, which kills the old lease_id for good.

These are the hottest statements of the service, so they are built ONCE, at import, as Core
statements with bound parameters, and return plain rows: building a statement per call and
loading ORM objects cost more CPU than PostgreSQL spends running them (benchmarks/README.md).
On PostgreSQL they are compiled once more and run straight on psycopg's connection
(auth_service.storage.driver_statement): 0.85 M instead of 1.36 M instructions per lease RPC
through the use cases (benchmarks.lease_instructions).

Repositories never commit: the service layer owns transactions. On SQLite every
transaction takes the write lock at BEGIN (auth_service.storage.database), so a read that
precedes a write in the same transaction cannot go stale.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    CompoundSelect,
    Select,
    Table,
    Text,
    Update,
    and_,
    bindparam,
    case,
    exists,
    func,
    literal_column,
    or_,
    select,
    update,
)

from auth_service.domain.audit import OK, AuditedRpc, NewAuditEvent
from auth_service.domain.garmin_limits import GarminEndpoint
from auth_service.domain.models import GarminTokens
from auth_service.domain.policies import GARTH_IN_DOUBT_RETRY
from auth_service.domain.repositories import GrantedRow, HandoverRows
from auth_service.domain.views import SessionRow, status_view
from auth_service.storage import session_rows as rows
from auth_service.storage.audit_repository import SqlAuditRepository
from auth_service.storage.driver_statement import DriverStatement
from auth_service.storage.executor import Executor, dialect_name
from auth_service.storage.lease_trail import GRANTED, handover_with_trail, with_trail
from auth_service.storage.models import GarminAccountLimit, UTCDateTime
from auth_service.storage.session_repository import SqlSessionRepository

T = rows.T
ACTIVE = rows.ACTIVE
_NOW = rows.NOW
_FREE = rows.FREE
_LIVE = rows.LIVE
_EXPIRES_AT = bindparam("p_expires_at", type_=UTCDateTime())
_DUE_BEFORE = bindparam("p_due_before", type_=UTCDateTime())
_IN_DOUBT_BEFORE = bindparam("p_in_doubt_before", type_=UTCDateTime())
_SYNCED_THROUGH = bindparam("p_synced_through", type_=UTCDateTime())
_NEW_LEASE_ID = bindparam("p_new_lease_id", type_=T.c.lease_id.type)
_HOLDER = bindparam("p_holder", type_=T.c.lease_holder.type)
_CALLER = bindparam("p_caller", type_=T.c.lease_caller.type)
_PREFIX = bindparam("p_prefix", type_=T.c.user_id.type)

_LIMITS = cast(Table, GarminAccountLimit.__table__)
# The account waits out a 429 of Garmin's Connect API (a worker's, reported at its release,
# or a validation's): a lease's token would go straight back there, so the user is neither
# granted nor due until it ends. One probe by primary key of the small cooldown table (rows
# whose cooldown ended are purged); the endpoint is written into the statement.
_API_COOLING = exists().where(
    _LIMITS.c.user_id == T.c.user_id,
    _LIMITS.c.endpoint == literal_column(f"'{GarminEndpoint.CONNECT_API.value}'", Text),
    _LIMITS.c.cooling_until > _NOW,
)
# Due for a sync: free, ACTIVE, neither synced nor attempted since `due_before`, not
# waiting out a Connect API cooldown, and not a garth session whose exchange Garmin refused
# in doubt, attempted within GARTH_IN_DOUBT_RETRY (`in_doubt_before`): a dead one ends only
# after the refusal grace, and asked about at every run, enough of them at the head of the
# due order would use up every call's skips.
_DUE = and_(
    T.c.state == ACTIVE,
    _FREE,
    or_(T.c.last_sync_attempt_at.is_(None), T.c.last_sync_attempt_at < _DUE_BEFORE),
    or_(T.c.last_synced_at.is_(None), T.c.last_synced_at < _DUE_BEFORE),
    or_(
        T.c.first_doubtful_refusal_at.is_(None),
        T.c.last_sync_attempt_at.is_(None),
        T.c.last_sync_attempt_at < _IN_DOUBT_BEFORE,
    ),
    ~_API_COOLING,
)
# Never synced first, then the oldest sync; user_id makes the order total. The partial index
# ix_garmin_authentication_state_due has exactly this order, so the database walks it and
# stops at the first due row instead of sorting every due row. Sessions whose garth exchange
# Garmin refused in doubt come after every other: never synced since, they would head the
# order, and each costs a skip that asks Garmin; a call answers "nothing due" after a few.
_DUE_ORDER = (
    T.c.first_doubtful_refusal_at.is_not(None),
    T.c.last_synced_at.is_not(None),
    T.c.last_synced_at,
    T.c.user_id,
)

# The fencing token grows in the same statement that grants: no two grants can ever share a
# token, and a later grant always sees a larger one.
_GRANT_VALUES: dict[str, Any] = {
    "lease_id": _NEW_LEASE_ID,
    "lease_holder": _HOLDER,
    "lease_caller": _CALLER,
    "lease_acquired_at": _NOW,
    "lease_expires_at": _EXPIRES_AT,
    "fencing_token": T.c.fencing_token + 1,
    "updated_at": _NOW,
}


def _grant_through(candidate: Select[Any]) -> Update:
    """PostgreSQL: lock the candidate row and grant it in one statement, returning the
    lease id the row held before (set = an expired lease was taken over).

    The candidate is a CTE, which PostgreSQL runs exactly once. (As a subquery in FROM it
    could be rescanned per joined row and, skipping the row just granted, name a second.)"""
    chosen = candidate.cte("candidate")
    return (
        update(T)
        .where(T.c.user_id == chosen.c.user_id, T.c.state == ACTIVE, _FREE)
        .values(_GRANT_VALUES)
        .returning(*T.c, chosen.c.previous_lease_id)
    )


_CANDIDATE_BY_USER = select(T.c.user_id, T.c.lease_id.label("previous_lease_id")).where(
    T.c.user_id == rows.USER_ID, T.c.state == ACTIVE, _FREE, ~_API_COOLING
)
# SKIP LOCKED: concurrent callers on other replicas each take a different due row, without a
# table lock (a row granted and committed meanwhile fails the re-check; the next is taken).
_CANDIDATE_DUE = select(T.c.user_id, T.c.lease_id.label("previous_lease_id")).where(_DUE)
# A scoped caller (a user_id_prefix in the callers file) picks only among its users.
# substr/length rather than LIKE: user ids may contain "_", which LIKE reads as a wildcard.
_IN_SCOPE = func.substr(T.c.user_id, 1, func.length(_PREFIX)) == _PREFIX
_CANDIDATE_DUE_SCOPED = _CANDIDATE_DUE.where(_IN_SCOPE)
_CANDIDATE_DUE = _CANDIDATE_DUE.order_by(*_DUE_ORDER).limit(1)
_CANDIDATE_DUE_SCOPED = _CANDIDATE_DUE_SCOPED.order_by(*_DUE_ORDER).limit(1)

_PG_GRANT = _grant_through(_CANDIDATE_BY_USER.with_for_update())
_PG_GRANT_NEXT = _grant_through(_CANDIDATE_DUE.with_for_update(skip_locked=True))
_PG_GRANT_NEXT_SCOPED = _grant_through(_CANDIDATE_DUE_SCOPED.with_for_update(skip_locked=True))
# SQLite: one writer at a time (BEGIN IMMEDIATE), so reading the candidate first and then
# granting it by user id cannot race; SQLite's RETURNING cannot name a joined table.
_GRANT_USER = (
    update(T)
    .where(T.c.user_id == rows.USER_ID, T.c.state == ACTIVE, _FREE)
    .values(_GRANT_VALUES)
    .returning(*T.c)
)

_FIND = select(*T.c).where(T.c.user_id == rows.USER_ID)
_FIND_BY_LEASE = select(*T.c).where(_LIVE)
# Renewal and release: the lease must be live AND have been obtained by the calling caller
# (auth_service.services.lease_holders): a leaked lease id is worth nothing to anyone else.
_LIVE_FOR_CALLER = and_(_LIVE, T.c.lease_caller == _CALLER)
_RENEW = (
    update(T)
    .where(_LIVE_FOR_CALLER)
    .values(lease_expires_at=_EXPIRES_AT, updated_at=_NOW)
    .returning(*T.c)
)
# A scoped caller renews only its users' leases: its scope may have narrowed since the grant.
_RENEW_SCOPED = _RENEW.where(_IN_SCOPE)
_RELEASE_VALUES: dict[str, Any] = {
    **rows.ENDED_LEASE,
    "last_sync_attempt_at": _NOW,
    "updated_at": _NOW,
}
_RELEASE = update(T).where(_LIVE_FOR_CALLER).values(_RELEASE_VALUES).returning(*T.c)
_RELEASE_SYNCED = (
    update(T)
    .where(_LIVE_FOR_CALLER)
    .values(
        {
            **_RELEASE_VALUES,
            "last_synced_at": _NOW,
            # synced_through never moves backwards: a late, shorter sync keeps the old mark.
            "synced_through": case(
                (
                    or_(T.c.synced_through.is_(None), T.c.synced_through < _SYNCED_THROUGH),
                    _SYNCED_THROUGH,
                ),
                else_=T.c.synced_through,
            ),
        }
    )
    .returning(*T.c)
)
_STORE_REFRESHED = (
    update(T)
    .where(_LIVE, T.c.user_id == rows.USER_ID, T.c.session_version == rows.VERSION)
    .values(rows.REFRESHED)
    .returning(*T.c)
)
_INVALIDATE = update(T).where(_LIVE).values(rows.INVALIDATED).returning(*T.c)
# With an expected session version (central refresh): the row must still hold the session
# the tokens were refreshed from, so a login or import that landed meanwhile wins.

# The same statements, also writing the change's audit event and change-log entry (grants:
# the row's new lease id is the event's; holder calls: the presented lease's digest).
_RECORDED: dict[Update, Select[Any]] = {
    **{
        grant: with_trail(grant, lease_digest=None, with_lease=True)
        for grant in (_PG_GRANT, _PG_GRANT_NEXT, _PG_GRANT_NEXT_SCOPED)
    },
    _RENEW: with_trail(_RENEW, lease_digest=rows.LEASE_ID, with_lease=True),
    _RENEW_SCOPED: with_trail(_RENEW_SCOPED, lease_digest=rows.LEASE_ID, with_lease=True),
    _RELEASE: with_trail(_RELEASE, lease_digest=rows.LEASE_ID, with_lease=False),
    _RELEASE_SYNCED: with_trail(_RELEASE_SYNCED, lease_digest=rows.LEASE_ID, with_lease=False),
}
# A worker's handover (LeaseNextSession carrying a release) as ONE statement on PostgreSQL:
# the release, and the grant of the next due session only if the release matched, each with
# its trail. By (release reports a sync, the caller is scoped to a user id prefix). Against a
# release and a grant in two statements: one round trip and one commit per synced user instead
# of two (figures: auth_service/services/lease_handover.py).
_HANDOVER: dict[tuple[bool, bool], CompoundSelect] = {
    (synced, scoped): handover_with_trail(
        _RELEASE_SYNCED if synced else _RELEASE,
        (_CANDIDATE_DUE_SCOPED if scoped else _CANDIDATE_DUE).with_for_update(skip_locked=True),
        _grant_through,
    )
    for synced in (False, True)
    for scoped in (False, True)
}
# Every statement above, run straight on psycopg on PostgreSQL (auth_service.storage.
# driver_statement: SQLAlchemy's execution path cost more than the statement).
_HOT: list[Update | Select[Any] | CompoundSelect] = [
    *_RECORDED,
    *_RECORDED.values(),
    *_HANDOVER.values(),
]
_DRIVER: dict[Update | Select[Any] | CompoundSelect, DriverStatement] = {
    statement: DriverStatement(statement)
    for statement in (
        *_HOT,
        _CANDIDATE_BY_USER,
        _CANDIDATE_DUE,
        _CANDIDATE_DUE_SCOPED,
        _GRANT_USER,
        _FIND,
        _FIND_BY_LEASE,
        _STORE_REFRESHED,
        _INVALIDATE,
    )
}


class SqlLeaseRepository:
    """Lease queries on one SQLAlchemy session (one transaction of the service layer)."""

    def __init__(
        self, session: Executor, sessions: SqlSessionRepository, audit: SqlAuditRepository
    ) -> None:
        self.session = session
        self._sessions = sessions
        self._audit = audit
        self._postgresql = dialect_name(session) == "postgresql"
        # Whether a PostgreSQL statement with `record_as` wrote a change-log entry (the store
        # wakes the sequencer after the commit).
        self.recorded_changes = False

    # --- reads -------------------------------------------------------------------------

    def find(self, user_id: str) -> SessionRow | None:
        """The user's row as it is now (used to explain why a grant was refused)."""
        return self._one(_FIND, p_user_id=user_id)

    def find_by_lease(self, lease_digest: str, now: datetime) -> SessionRow | None:
        """The row a live lease holds, if the lease is live at `now`."""
        return self._one(_FIND_BY_LEASE, p_lease_id=lease_digest, p_now=now)

    # --- grants ------------------------------------------------------------------------

    def grant(
        self,
        user_id: str,
        *,
        lease_digest: str,
        holder: str,
        caller: str,
        now: datetime,
        expires_at: datetime,
        record_as: AuditedRpc | None = None,
    ) -> GrantedRow | None:
        """Lease the user's ACTIVE session if no live lease holds it; None when refused.
        `record_as`: write the grant's audit event and change-log entry with it."""
        values = _grant_params(lease_digest, holder, caller, now, expires_at)
        values["p_user_id"] = user_id
        if self._postgresql:
            return self._granted(_PG_GRANT, record_as, caller, **values)
        return self._grant_sqlite(_CANDIDATE_BY_USER, record_as, **values)

    def grant_next(  # noqa: PLR0913 - keyword-only: what the grant sets and selects by
        self,
        *,
        lease_digest: str,
        holder: str,
        caller: str,
        now: datetime,
        expires_at: datetime,
        due_before: datetime,
        user_id_prefix: str | None = None,
        record_as: AuditedRpc | None = None,
    ) -> GrantedRow | None:
        """Lease the most overdue free ACTIVE session (of a user whose id starts with
        `user_id_prefix`, when given); None when nothing is due."""
        values = {**_grant_params(lease_digest, holder, caller, now, expires_at)}
        values.update(_due_params(now, due_before))
        if user_id_prefix is not None:
            values["p_prefix"] = user_id_prefix
            if self._postgresql:
                return self._granted(_PG_GRANT_NEXT_SCOPED, record_as, caller, **values)
            return self._grant_sqlite(_CANDIDATE_DUE_SCOPED, record_as, **values)
        if self._postgresql:
            return self._granted(_PG_GRANT_NEXT, record_as, caller, **values)
        return self._grant_sqlite(_CANDIDATE_DUE, record_as, **values)

    def _granted(
        self, statement: Update, record_as: AuditedRpc | None, caller: str, **params: Any
    ) -> GrantedRow | None:
        if record_as is not None:
            params.update(p_trail_caller=caller, p_trail_rpc=record_as.value)
            row = self._first(_RECORDED[statement], params)
            self.recorded_changes |= row is not None
        else:
            row = self._first(statement, params)
        if row is None:
            return None
        return GrantedRow(cast(SessionRow, row), took_over=row.previous_lease_id is not None)

    def _grant_sqlite(
        self, candidate: Select[Any], record_as: AuditedRpc | None, **params: Any
    ) -> GrantedRow | None:
        chosen = self._first(candidate, params)
        if chosen is None:
            return None
        row = self._one(_GRANT_USER, **{**params, "p_user_id": chosen.user_id})
        if row is None:
            return None
        if record_as is not None:
            self._record(record_as, params["p_caller"], params["p_now"], row, row.lease_id)
        return GrantedRow(row, took_over=chosen.previous_lease_id is not None)

    # --- the holder's calls ----------------------------------------------------------

    def renew(
        self,
        lease_digest: str,
        *,
        caller: str,
        now: datetime,
        expires_at: datetime,
        user_id_prefix: str | None = None,
        record_as: AuditedRpc | None = None,
    ) -> SessionRow | None:
        """Move the expiry of a live lease `caller` obtained (of a user whose id starts with
        `user_id_prefix`, when given) to `expires_at`; None when the lease is dead, another
        caller's or out of that scope."""
        params: dict[str, Any] = {
            "p_lease_id": lease_digest,
            "p_caller": caller,
            "p_now": now,
            "p_expires_at": expires_at,
        }
        if user_id_prefix is None:
            return self._holder_call(_RENEW, record_as, **params)
        return self._holder_call(_RENEW_SCOPED, record_as, p_prefix=user_id_prefix, **params)

    def release(
        self,
        lease_digest: str,
        *,
        caller: str,
        now: datetime,
        synced_through: datetime | None,
        record_as: AuditedRpc | None = None,
    ) -> SessionRow | None:
        """End a live lease `caller` obtained, recording the sync attempt (and success); None
        when the lease is dead or another caller's."""
        params: dict[str, Any] = {"p_lease_id": lease_digest, "p_caller": caller, "p_now": now}
        if synced_through is None:
            return self._holder_call(_RELEASE, record_as, **params)
        return self._holder_call(
            _RELEASE_SYNCED, record_as, p_synced_through=synced_through, **params
        )

    def _holder_call(
        self, statement: Update, record_as: AuditedRpc | None, **params: Any
    ) -> SessionRow | None:
        if record_as is None:
            return self._one(statement, **params)
        if self._postgresql:
            params.update(p_trail_caller=params["p_caller"], p_trail_rpc=record_as.value)
            row = self._one(_RECORDED[statement], **params)
            self.recorded_changes |= row is not None
            return row
        row = self._one(statement, **params)
        if row is not None:
            self._record(record_as, params["p_caller"], params["p_now"], row, params["p_lease_id"])
        return row

    def _record(
        self, rpc: AuditedRpc, caller: str, now: datetime, row: SessionRow, digest: str | None
    ) -> None:
        """SQLite: the audit event of the change that left `row`, as PostgreSQL's one statement
        writes it (auth_service.storage.lease_trail), recorded like every other event: the
        store writes it and its change-log entry before the commit."""
        event = NewAuditEvent(
            occurred_at=now,
            caller=caller,
            rpc=rpc.value,
            user_id=row.user_id,
            outcome_code=OK.code,
            outcome_reason=OK.reason,
            lease_id=digest,
            fencing_token=row.fencing_token,
        )
        self._audit.add(event, leaves=status_view(row, now))

    def release_and_grant_next(  # noqa: PLR0913 - keyword-only: a release's and a grant's
        self,
        released_digest: str,
        *,
        synced_through: datetime | None,
        lease_digest: str,
        holder: str,
        caller: str,
        now: datetime,
        expires_at: datetime,
        due_before: datetime,
        user_id_prefix: str | None = None,
    ) -> HandoverRows:
        """The release of a live lease `caller` obtained, then, only if it was released, the
        grant of the most overdue free session: both recorded (ReleaseLease, LeaseNextSession).
        PostgreSQL: one statement; SQLite: the two, in the unit's transaction."""
        if not self._postgresql:
            released = self.release(
                released_digest,
                caller=caller,
                now=now,
                synced_through=synced_through,
                record_as=AuditedRpc.RELEASE_LEASE,
            )
            if released is None:
                return HandoverRows(None, None)
            granted = self.grant_next(
                lease_digest=lease_digest,
                holder=holder,
                caller=caller,
                now=now,
                expires_at=expires_at,
                due_before=due_before,
                user_id_prefix=user_id_prefix,
                record_as=AuditedRpc.LEASE_NEXT_SESSION,
            )
            return HandoverRows(released, granted)
        params = _grant_params(lease_digest, holder, caller, now, expires_at)
        params.update(
            _due_params(now, due_before), p_lease_id=released_digest, p_trail_caller=caller
        )
        if synced_through is not None:
            params["p_synced_through"] = synced_through
        if user_id_prefix is not None:
            params["p_prefix"] = user_id_prefix
        statement = _HANDOVER[synced_through is not None, user_id_prefix is not None]
        changed = _DRIVER[statement].all(self.session, params)
        self.recorded_changes |= bool(changed)
        released_row = next((row for row in changed if row.part != GRANTED), None)
        granted_row = next((row for row in changed if row.part == GRANTED), None)
        return HandoverRows(
            cast("SessionRow | None", released_row),
            None
            if granted_row is None
            else GrantedRow(
                cast(SessionRow, granted_row), took_over=granted_row.previous_lease_id is not None
            ),
        )

    def store_refreshed(
        self, lease_digest: str, *, locked: SessionRow, tokens: GarminTokens, now: datetime
    ) -> SessionRow | None:
        """Store refreshed tokens under a live lease; None when the lease is dead.

        The tokens are sealed for one user's row at the version they make it: the caller
        locked the row (`locked`), so the statement (which re-checks its version) stores over
        exactly the row the seal names.
        """
        user_id, version = locked.user_id, locked.session_version
        return self._one(
            _STORE_REFRESHED,
            p_lease_id=lease_digest,
            p_now=now,
            p_user_id=user_id,
            **self._sessions.sealed_over(version, user_id, tokens),
            # The holder's refresh rotated the stored refresh token away: its digest.
            **self._sessions.rotated_over(version, locked, tokens),
        )

    def invalidate(self, lease_digest: str, *, now: datetime, reason: str) -> SessionRow | None:
        """Mark the session AUTH_EXPIRED, wipe its secrets, end the lease; None when dead."""
        return self._one(
            _INVALIDATE, p_lease_id=lease_digest, p_now=now, p_reason=rows.reason_param(reason)
        )

    # --- plumbing ----------------------------------------------------------------------

    def _one(self, statement: Update | Select[Any], **params: Any) -> SessionRow | None:
        return cast("SessionRow | None", self._first(statement, params))

    def _first(self, statement: Update | Select[Any], params: dict[str, Any]) -> Any:
        return _DRIVER[statement].first(self.session, params)


def _due_params(now: datetime, due_before: datetime) -> dict[str, Any]:
    return {"p_due_before": due_before, "p_in_doubt_before": now - GARTH_IN_DOUBT_RETRY}


def _grant_params(
    lease_digest: str, holder: str, caller: str, now: datetime, expires_at: datetime
) -> dict[str, Any]:
    return {
        "p_new_lease_id": lease_digest,
        "p_holder": holder,
        "p_caller": caller,
        "p_now": now,
        "p_expires_at": expires_at,
    }
