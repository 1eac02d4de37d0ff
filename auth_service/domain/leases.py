"""The lease protocol: workers borrow a user's Garmin session, one holder at a time.

Every grant, renewal, release and report is one short transaction around one conditional
statement (auth_service.storage.lease_repository). Garmin is only ever called between
transactions: no row lock or open transaction is held across an HTTP call.

Central refresh: a grant whose stored OAuth2 token would expire before the lease does is
refreshed here, after the grant, so only the new holder's request talks to Garmin (several
workers asking at once: one grant, one exchange). The result is stored only if the lease is
still ours and the session version unchanged.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from auth_service.clock import Clock
from auth_service.config import LeaseSettings
from auth_service.domain import audit
from auth_service.domain.audit import AuditedRpc
from auth_service.domain.errors import (
    FieldViolation,
    GarminRateLimited,
    GarminSessionRejected,
    GarminUnavailable,
    LeaseHeld,
    LeaseLost,
    SessionNotActive,
    SessionNotFound,
)
from auth_service.domain.events import service_events
from auth_service.domain.models import (
    GarminTokens,
    LeaseGrant,
    LeaseView,
    SessionState,
    SessionStatusView,
)
from auth_service.domain.ports import GarminUpstream
from auth_service.domain.validation import (
    check_duration,
    check_holder,
    check_opaque_id,
    check_reason,
    check_user_id,
    raise_if_any,
)
from auth_service.storage.lease_repository import GrantedRow, LeaseRepository, SealedSession
from auth_service.storage.secrets import SecretBox
from auth_service.storage.views import SessionRow, live_lease, status_view

log = logging.getLogger(__name__)

MAX_MIN_SYNC_INTERVAL = timedelta(days=30)
# LeaseNextSession skips at most this many due sessions that Garmin rejects in one call.
MAX_REJECTED_SKIPS = 5
# A worker's clock may run a little ahead of ours; a synced_through further ahead is a bug.
SYNCED_THROUGH_SKEW = timedelta(minutes=5)
# Bytes of randomness in a lease id: token_urlsafe(24) gives 32 URL-safe characters.
LEASE_ID_BYTES = 24
# A refused grant is re-read to say why; if the lease vanished in between, try again.
_GRANT_ATTEMPTS = 3
CENTRAL_REFRESH_REJECTED = "Garmin rejected the session when the service refreshed it"


def new_lease_id() -> str:
    return secrets.token_urlsafe(LEASE_ID_BYTES)


@dataclass(frozen=True)
class _Granted:
    """A grant as committed, with the session version its tokens belong to and the RPC that
    asked for it (the audit trail names it on the central refresh's events too)."""

    grant: LeaseGrant
    session_version: int
    rpc: AuditedRpc


class LeaseService:
    """LeaseSession, LeaseNextSession, RenewLease, ReleaseLease, Report{Refreshed,Invalidated}."""

    def __init__(
        self,
        db: sessionmaker[Session],
        box: SecretBox,
        upstream: GarminUpstream,
        clock: Clock,
        settings: LeaseSettings,
    ) -> None:
        self.db = db
        self.box = box
        self.upstream = upstream
        self.clock = clock
        self.settings = settings

    # --- grants ------------------------------------------------------------------------

    def lease_session(self, user_id: str, holder: str, ttl: timedelta | None) -> LeaseGrant:
        """Lease one user's ACTIVE session (refreshing its token first when needed)."""
        raise_if_any(check_user_id(user_id), check_holder(holder), self._ttl_violations(ttl))
        lifetime = self._lifetime(ttl)
        granted: _Granted | None = None
        for _ in range(_GRANT_ATTEMPTS):
            granted = self._try_grant(user_id, holder, lifetime)
            if granted is not None:
                break
        if granted is None:
            # The lease kept changing hands between our grant and our look at it.
            raise LeaseHeld("the session is leased by another holder; try again shortly")
        return self._hand_out(granted)

    def lease_next_session(
        self, holder: str, ttl: timedelta | None, min_sync_interval: timedelta | None
    ) -> LeaseGrant | None:
        """Lease the most overdue ACTIVE session; None when nothing is due."""
        raise_if_any(
            check_holder(holder),
            self._ttl_violations(ttl),
            check_duration(
                min_sync_interval,
                "min_sync_interval",
                minimum=timedelta(0),
                maximum=MAX_MIN_SYNC_INTERVAL,
            ),
        )
        lifetime = self._lifetime(ttl)
        # A due session whose central refresh Garmin rejects is invalidated and skipped: the
        # worker asked for "the next session", not for that user, so it gets the next one.
        for _ in range(MAX_REJECTED_SKIPS):
            now = self.clock.now()
            with self.db.begin() as session:
                grant = LeaseRepository(session).grant_next(
                    lease_id=new_lease_id(),
                    holder=holder,
                    now=now,
                    expires_at=now + lifetime,
                    due_before=now - (min_sync_interval or timedelta(0)),
                )
                if grant is None:
                    return None
                granted = self._granted(session, grant, now, AuditedRpc.LEASE_NEXT_SESSION)
            try:
                return self._hand_out(granted)
            except GarminSessionRejected:
                log.info("due session rejected by Garmin at refresh; leasing the next one")
        return None

    # --- the holder's calls ----------------------------------------------------------

    def renew_lease(self, lease_id: str, ttl: timedelta | None) -> LeaseView:
        """Extend a live lease to now + ttl."""
        raise_if_any(check_opaque_id(lease_id, "lease_id"), self._ttl_violations(ttl))
        now = self.clock.now()
        with self.db.begin() as session:
            row = LeaseRepository(session).renew(
                lease_id, now=now, expires_at=now + self._lifetime(ttl)
            )
            lease = self._live_lease(row, now)
            audit.record(
                session,
                rpc=AuditedRpc.RENEW_LEASE,
                now=now,
                outcome=audit.OK,
                user_id=lease.user_id,
                lease=lease,
            )
            return lease

    def release_lease(self, lease_id: str, synced_through: datetime | None) -> SessionStatusView:
        """End a live lease; synced_through set means the sync succeeded up to then."""
        now = self.clock.now()
        raise_if_any(
            check_opaque_id(lease_id, "lease_id"), _synced_through_violations(synced_through, now)
        )
        with self.db.begin() as session:
            row = LeaseRepository(session).release(lease_id, now=now, synced_through=synced_through)
            if row is None:
                raise _lease_lost()
            audit.record(
                session,
                rpc=AuditedRpc.RELEASE_LEASE,
                now=now,
                outcome=audit.OK,
                user_id=row.user_id,
                lease=audit.LeaseRef(lease_id, row.fencing_token),
            )
            return status_view(row, now)

    def report_refreshed(self, lease_id: str, tokens: GarminTokens) -> SessionStatusView:
        """Store tokens the holder's garth refreshed. Only a live lease's holder may."""
        raise_if_any(check_opaque_id(lease_id, "lease_id"))
        now = self.clock.now()
        with self.db.begin() as session:
            repo = LeaseRepository(session)
            # The ciphertext is bound to the user's row: find the user the lease names, then
            # store conditionally (the UPDATE re-checks the lease and the user, so a lease
            # that died in between changes nothing).
            leased = repo.find_by_lease(lease_id, now)
            row = None
            if leased is not None:
                sealed = self._seal(leased.user_id, tokens)
                row = repo.store_refreshed(lease_id, sealed=sealed, now=now)
            if row is not None:
                audit.record(
                    session,
                    rpc=AuditedRpc.REPORT_REFRESHED,
                    now=now,
                    outcome=audit.OK,
                    user_id=row.user_id,
                    lease=audit.LeaseRef(lease_id, row.fencing_token),
                )
                log.debug("refreshed tokens stored for user %s by its lease holder", row.user_id)
                return status_view(row, now)
            # A holder without a live lease tried to store tokens: recorded, committed, answered.
            audit.record_lease_lost(
                session, rpc=AuditedRpc.REPORT_REFRESHED, now=now, lease_id=lease_id
            )
        raise _lease_lost()

    def report_invalidated(self, lease_id: str, reason: str) -> SessionStatusView:
        """Garmin definitely rejected the session: AUTH_EXPIRED, secrets wiped, lease ended."""
        raise_if_any(check_opaque_id(lease_id, "lease_id"), check_reason(reason))
        now = self.clock.now()
        with self.db.begin() as session:
            row = LeaseRepository(session).invalidate(lease_id, now=now, reason=reason)
            if row is not None:
                audit.record(
                    session,
                    rpc=AuditedRpc.REPORT_INVALIDATED,
                    now=now,
                    outcome=audit.OK,
                    user_id=row.user_id,
                    lease=audit.LeaseRef(lease_id, row.fencing_token),
                )
                log.info("session of user %s invalidated by its lease holder", row.user_id)
                return status_view(row, now)
            # A holder without a live lease tried to end the session: recorded, committed,
            # answered.
            audit.record_lease_lost(
                session, rpc=AuditedRpc.REPORT_INVALIDATED, now=now, lease_id=lease_id
            )
        raise _lease_lost()

    # --- granting ----------------------------------------------------------------------

    def _try_grant(self, user_id: str, holder: str, lifetime: timedelta) -> _Granted | None:
        """One grant attempt: the grant, a refusal error, or None to try again."""
        now = self.clock.now()
        with self.db.begin() as session:
            repo = LeaseRepository(session)
            grant = repo.grant(
                user_id,
                lease_id=new_lease_id(),
                holder=holder,
                now=now,
                expires_at=now + lifetime,
            )
            if grant is None:
                _raise_refusal(repo.find(user_id), now)
                return None
            return self._granted(session, grant, now, AuditedRpc.LEASE_SESSION)

    def _granted(
        self, session: Session, grant: GrantedRow, now: datetime, rpc: AuditedRpc
    ) -> _Granted:
        """Views of a freshly granted row, built inside its transaction, which also records
        the grant."""
        row = grant.row
        if grant.took_over:
            # The row still named a lease that expired without being released.
            service_events().lease_taken_over()
        lease = self._live_lease(row, now)
        if row.session_ciphertext is None:
            # An ACTIVE row always holds a session; if not, no token can be handed out.
            raise SessionNotActive("the session holds no tokens; log in again")
        tokens = self.box.open_tokens(row.user_id, row.session_ciphertext)
        audit.record(session, rpc=rpc, now=now, outcome=audit.OK, user_id=row.user_id, lease=lease)
        log.debug("lease granted on user %s (fencing token %d)", row.user_id, row.fencing_token)
        return _Granted(
            grant=LeaseGrant(lease=lease, tokens=tokens, status=status_view(row, now)),
            session_version=row.session_version,
            rpc=rpc,
        )

    def _hand_out(self, granted: _Granted) -> LeaseGrant:
        """The grant, with its token refreshed first when it would expire during the lease."""
        grant = granted.grant
        if grant.tokens.oauth2.expires_at > grant.lease.expires_at:
            return grant
        return self._refresh_centrally(granted)

    # --- central refresh ---------------------------------------------------------------

    def _refresh_centrally(self, granted: _Granted) -> LeaseGrant:
        grant = granted.grant
        try:
            # Outside any transaction: nothing is locked while Garmin answers.
            fresh = self.upstream.refresh(grant.tokens)
        except GarminSessionRejected as rejected:
            self._invalidate_rejected(granted, rejected)
            raise
        except (GarminRateLimited, GarminUnavailable) as exc:
            if grant.tokens.oauth2.expires_at > self.clock.now():
                # Garmin is busy, not saying no: the current token still works for now,
                # and the holder's garth will refresh it later and report.
                log.warning(
                    "central refresh for user %s failed (%s); handing out the current token",
                    grant.lease.user_id,
                    type(exc).__name__,
                )
                return grant
            self._release_unused(granted, exc)
            raise
        except Exception as exc:
            # Unexpected: do not leave the session stuck under a lease nobody will use.
            self._release_unused(granted, exc)
            raise
        return self._store_fresh(granted, fresh)

    def _store_fresh(self, granted: _Granted, fresh: GarminTokens) -> LeaseGrant:
        lease = granted.grant.lease
        sealed = self._seal(lease.user_id, fresh)
        now = self.clock.now()
        with self.db.begin() as session:
            row = LeaseRepository(session).store_refreshed(
                lease.lease_id, sealed=sealed, now=now, expected_version=granted.session_version
            )
            if row is None:
                # Expired, or the user logged in again meanwhile: the new session wins and
                # these tokens are dropped.
                raise LeaseLost("the lease ended while the session was being refreshed")
            audit.record(
                session,
                rpc=granted.rpc,
                now=now,
                outcome=audit.SESSION_REFRESHED,
                user_id=row.user_id,
                lease=lease,
            )
            return LeaseGrant(
                lease=self._live_lease(row, now), tokens=fresh, status=status_view(row, now)
            )

    def _invalidate_rejected(self, granted: _Granted, rejected: GarminSessionRejected) -> None:
        lease = granted.grant.lease
        now = self.clock.now()
        with self.db.begin() as session:
            row = LeaseRepository(session).invalidate(
                lease.lease_id,
                now=now,
                reason=CENTRAL_REFRESH_REJECTED,
                expected_version=granted.session_version,
            )
            if row is not None:
                # What LeaseSession answers (SESSION_NOT_ACTIVE); LeaseNextSession moves on.
                audit.record(
                    session,
                    rpc=granted.rpc,
                    now=now,
                    outcome=audit.outcome_of(rejected),
                    user_id=row.user_id,
                    lease=lease,
                )
        if row is None:
            # The session changed under us (new login, or our lease expired and was taken
            # over): the rejected tokens may no longer be the stored ones.
            raise LeaseLost("the lease ended while the session was being refreshed")
        log.info("session of user %s invalidated: Garmin rejected its refresh", lease.user_id)

    def _release_unused(self, granted: _Granted, failure: BaseException) -> None:
        """Release a lease we granted but cannot hand out; counts as a sync attempt so a
        queue-draining worker moves on to the next user instead of hammering Garmin."""
        lease = granted.grant.lease
        now = self.clock.now()
        with self.db.begin() as session:
            row = LeaseRepository(session).release(lease.lease_id, now=now, synced_through=None)
            if row is not None:
                audit.record(
                    session,
                    rpc=granted.rpc,
                    now=now,
                    outcome=audit.outcome_of(failure),
                    user_id=row.user_id,
                    lease=lease,
                )

    # --- helpers -----------------------------------------------------------------------

    def _seal(self, user_id: str, tokens: GarminTokens) -> SealedSession:
        return SealedSession(
            user_id=user_id,
            ciphertext=self.box.seal_tokens(user_id, tokens),
            access_token_expires_at=tokens.oauth2.expires_at,
        )

    def _ttl_violations(self, ttl: timedelta | None) -> list[FieldViolation]:
        return check_duration(
            ttl,
            "ttl",
            minimum=timedelta(seconds=self.settings.min_ttl),
            maximum=timedelta(seconds=self.settings.max_ttl),
        )

    def _lifetime(self, ttl: timedelta | None) -> timedelta:
        return ttl if ttl is not None else timedelta(seconds=self.settings.default_ttl)

    @staticmethod
    def _live_lease(row: SessionRow | None, now: datetime) -> LeaseView:
        lease = None if row is None else live_lease(row, now)
        if lease is None:
            raise _lease_lost()
        return lease


def _lease_lost() -> LeaseLost:
    return LeaseLost("the lease is expired, released, taken over or unknown")


def _raise_refusal(row: SessionRow | None, now: datetime) -> None:
    """Say why a grant was refused; return only if it should simply be retried."""
    if row is None or row.state is SessionState.NOT_CONNECTED:
        raise SessionNotFound("no Garmin session is stored for this user")
    if row.state is not SessionState.ACTIVE:
        raise SessionNotActive(f"the session is {row.state.value}, not ACTIVE")
    lease = live_lease(row, now)
    if lease is not None:
        raise LeaseHeld(
            f"the session is leased by {lease.holder!r} until {lease.expires_at.isoformat()}"
        )


def _synced_through_violations(value: datetime | None, now: datetime) -> list[FieldViolation]:
    if value is None:
        return []
    if value.tzinfo is None:
        return [FieldViolation("synced_through", "must carry a time zone")]
    if value > now + SYNCED_THROUGH_SKEW:
        return [FieldViolation("synced_through", "must not be in the future")]
    return []
