"""The lease protocol: workers borrow a user's Garmin session, one holder at a time.

Every grant, renewal, release and report is one short unit of work around one conditional
statement (auth_service.domain.repositories.LeaseRepository). Garmin is only ever called
between transactions (auth_service.services.central_refresh): no row lock or open transaction
is held across an HTTP call.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from auth_service.domain import audit
from auth_service.domain.audit import AuditedRpc, LeaseRef
from auth_service.domain.errors import (
    FieldViolation,
    GarminRateLimited,
    GarminRefusalInDoubt,
    GarminSessionRejected,
    LeaseHeld,
    LeaseLost,
    OutsideUserScope,
    SecretUnreadable,
    SessionNotActive,
    SessionNotFound,
)
from auth_service.domain.events import service_events
from auth_service.domain.garmin_limits import GarminEndpoint, GarminLimitSettings
from auth_service.domain.lease_ids import lease_digest
from auth_service.domain.models import (
    GarminTokens,
    LeaseGrant,
    LeaseView,
    SessionState,
    SessionStatusView,
)
from auth_service.domain.policies import LeaseSettings
from auth_service.domain.repositories import GrantedRow
from auth_service.domain.validation import (
    check_duration,
    check_holder,
    check_opaque_id,
    check_reason,
    check_user_id,
    in_scope,
    raise_if_any,
)
from auth_service.domain.views import (
    SessionRow,
    live_lease,
    live_lease_of,
    refresh_claimed,
    status_view,
)
from auth_service.services.central_refresh import CentralRefresh, Granted
from auth_service.services.garmin_gate import GarminGate
from auth_service.services.lease_holders import (
    check_known_version,
    check_not_rotated_away,
    check_refresh_of,
    check_reported_version,
    check_same_account,
    held_by_caller,
)
from auth_service.services.session_refresh import RefreshUnderWay, SessionRefresher
from auth_service.services.unit_of_work import UnitOfWork, UnitsOfWork

log = logging.getLogger(__name__)

MAX_MIN_SYNC_INTERVAL = timedelta(days=30)
# LeaseNextSession skips at most this many due sessions that Garmin rejects in one call.
MAX_REJECTED_SKIPS = 5
# ... and at most this many due sessions in all (most cost no Garmin call: rows that fail to
# open, after a key was left out of the ring).
MAX_SKIPPED_ROWS = 100
# A worker's clock may run a little ahead of ours; a synced_through further ahead is a bug.
SYNCED_THROUGH_SKEW = timedelta(minutes=5)
# Bytes of randomness in a lease id: token_urlsafe(24) gives 32 URL-safe characters.
LEASE_ID_BYTES = 24
# A refused grant is re-read to say why; if the lease vanished in between, try again.
_GRANT_ATTEMPTS = 3


def new_lease_id() -> str:
    return secrets.token_urlsafe(LEASE_ID_BYTES)


class LeaseService:
    """LeaseSession, LeaseNextSession, RenewLease, ReleaseLease, Report{Refreshed,Invalidated}."""

    def __init__(
        self,
        uow: UnitsOfWork,
        refresher: SessionRefresher,
        settings: LeaseSettings,
        gate: GarminGate | None = None,
    ) -> None:
        self._uow = uow
        self._settings = settings
        self._refresher = refresher
        self._refresh = CentralRefresh(uow, refresher)
        # Garmin's 429s as every replica sees them: a worker's, reported at its release,
        # start the account's cooldown there, and a cooldown of the Connect API holds back
        # the account's leases.
        self._gate = gate or GarminGate(uow, GarminLimitSettings())

    # --- grants ------------------------------------------------------------------------

    def lease_session(
        self,
        user_id: str,
        holder: str,
        ttl: timedelta | None,
        *,
        user_id_prefix: str | None = None,
        with_refresh_token: bool = True,
    ) -> LeaseGrant:
        """Lease one user's ACTIVE session (refreshing its token first when needed); a
        caller scoped to `user_id_prefix` may lease only users whose id starts with it.
        `with_refresh_token`: the holder gets the whole session, not just the access token
        (CentralRefresh.hand_out)."""
        raise_if_any(check_user_id(user_id), check_holder(holder), self._ttl_violations(ttl))
        if not in_scope(user_id, user_id_prefix):
            # Decided on the id alone, before any read: says nothing about the user.
            raise OutsideUserScope("this caller may not lease sessions outside its user scope")
        lifetime = self._lifetime(ttl)
        rpc = AuditedRpc.LEASE_SESSION
        for _ in range(_GRANT_ATTEMPTS):
            # One statement grants and records the grant, alone (in autocommit on PostgreSQL:
            # one round trip); a refusal is explained by a read.
            with self._uow.single_write() as uow:
                lease_id, expires_at = new_lease_id(), uow.now + lifetime
                grant = uow.leases.grant(
                    user_id,
                    lease_digest=lease_digest(lease_id),
                    holder=holder,
                    caller=audit.caller_name(),
                    now=uow.now,
                    expires_at=expires_at,
                    record_as=rpc,
                )
                if grant is None:
                    # Explained by the state callers see (an abandoned login reads
                    # NOT_CONNECTED or AUTH_EXPIRED, not MFA_PENDING).
                    _raise_refusal(uow.sessions.find(user_id, uow.now), uow.now)
                    # ACTIVE and free: the account waits out a Connect API 429.
                    refused = self._gate.lease_refusal(uow, user_id)
                    if refused is not None:
                        raise refused
                    continue
                opened = _opened(uow, grant, rpc, lease_id)
            return self._refresh.hand_out(
                self._usable(opened), with_refresh_token=with_refresh_token
            )
        # The lease kept changing hands between our grant and our look at it.
        raise LeaseHeld("the session is leased by another holder; try again shortly")

    def lease_next_session(
        self,
        holder: str,
        ttl: timedelta | None,
        min_sync_interval: timedelta | None,
        *,
        user_id_prefix: str | None = None,
        with_refresh_token: bool = True,
    ) -> LeaseGrant | None:
        """Lease the most overdue ACTIVE session (among the users whose id starts with
        `user_id_prefix`, when given); None when nothing is due."""
        raise_if_any(self.next_violations(holder, ttl, min_sync_interval))
        return self.lease_next_checked(
            holder,
            ttl,
            min_sync_interval,
            user_id_prefix=user_id_prefix,
            with_refresh_token=with_refresh_token,
        )

    def lease_next_checked(
        self,
        holder: str,
        ttl: timedelta | None,
        min_sync_interval: timedelta | None,
        *,
        user_id_prefix: str | None = None,
        with_refresh_token: bool = True,
    ) -> LeaseGrant | None:
        """lease_next_session, for fields already checked (next_violations found none)."""
        # Due as of the call's start: a session skipped below counts as attempted after that,
        # so even with no minimum interval the next grant cannot pick it again.
        due_before = self._uow.now() - (min_sync_interval or timedelta(0))
        return self._lease_next(
            holder,
            self._lifetime(ttl),
            due_before,
            user_id_prefix,
            MAX_REJECTED_SKIPS,
            with_refresh_token=with_refresh_token,
        )

    def release_and_lease_next_checked(  # noqa: PLR0913 - a release's and a grant's fields
        self,
        release_lease_id: str,
        synced_through: datetime | None,
        holder: str,
        ttl: timedelta | None,
        min_sync_interval: timedelta | None,
        *,
        user_id_prefix: str | None = None,
        with_refresh_token: bool = True,
        garmin_retry_after: timedelta | None = None,
    ) -> tuple[SessionStatusView, LeaseGrant | None]:
        """release_checked, then lease_next_checked, for fields already checked: the release
        and the first grant in one single write (on PostgreSQL one statement, so one round
        trip and one commit per synced user). A refused release grants nothing (LeaseLost);
        a grant that cannot be handed out is skipped as lease_next_checked skips it. A
        release that reports Garmin's 429 (`garmin_retry_after`) is a transaction of its own,
        with the cooldown it starts, and the grants follow it (a 429 is no hot path)."""
        lifetime = self._lifetime(ttl)
        due_before = self._uow.now() - (min_sync_interval or timedelta(0))
        if garmin_retry_after is not None:
            released = self.release_checked(
                release_lease_id, synced_through, garmin_retry_after, user_id_prefix=user_id_prefix
            )
            return released, self._lease_next(
                holder,
                lifetime,
                due_before,
                user_id_prefix,
                MAX_REJECTED_SKIPS,
                with_refresh_token=with_refresh_token,
            )
        rpc = AuditedRpc.LEASE_NEXT_SESSION
        with self._uow.single_write() as uow:
            lease_id = new_lease_id()
            changed = uow.leases.release_and_grant_next(
                lease_digest(release_lease_id),
                synced_through=synced_through,
                lease_digest=lease_digest(lease_id),
                holder=holder,
                caller=audit.caller_name(),
                now=uow.now,
                expires_at=uow.now + lifetime,
                due_before=due_before,
                user_id_prefix=user_id_prefix,
            )
            if changed.released is None:
                raise _lease_lost()
            released = status_view(changed.released, uow.now)
            if changed.granted is None:
                return released, None
            opened = _opened(uow, changed.granted, rpc, lease_id)
        grant, asked_garmin = self._handed_out(opened, with_refresh_token)
        if grant is None:
            grant = self._lease_next(
                holder,
                lifetime,
                due_before,
                user_id_prefix,
                MAX_REJECTED_SKIPS - asked_garmin,
                with_refresh_token=with_refresh_token,
                # The statement's own grant was one of the call's skips.
                skips=MAX_SKIPPED_ROWS - 1,
            )
        return released, grant

    def _lease_next(
        self,
        holder: str,
        lifetime: timedelta,
        due_before: datetime,
        user_id_prefix: str | None,
        attempts: int,
        *,
        with_refresh_token: bool,
        skips: int = MAX_SKIPPED_ROWS,
    ) -> LeaseGrant | None:
        """Grant the most overdue session due before `due_before`, skipping those that
        cannot be handed out; None when nothing is due. At most `attempts` skips may have
        asked Garmin (each a refresh), and at most `skips` in all (MAX_SKIPPED_ROWS for the
        whole call): rows that fail to open cost no Garmin call, and a run of them must not
        hide a due session behind them (each skip counts as the row's sync attempt, so it
        leaves the queue)."""
        rpc = AuditedRpc.LEASE_NEXT_SESSION
        garmin_skips = 0
        for _ in range(skips):
            with self._uow.single_write() as uow:
                lease_id = new_lease_id()
                grant = uow.leases.grant_next(
                    lease_digest=lease_digest(lease_id),
                    holder=holder,
                    caller=audit.caller_name(),
                    now=uow.now,
                    expires_at=uow.now + lifetime,
                    due_before=due_before,
                    user_id_prefix=user_id_prefix,
                    record_as=rpc,
                )
                if grant is None:
                    return None
                opened = _opened(uow, grant, rpc, lease_id)
            handed_out, asked_garmin = self._handed_out(opened, with_refresh_token)
            if handed_out is not None:
                return handed_out
            garmin_skips += asked_garmin
            if garmin_skips >= attempts:
                return None
        return None

    def _handed_out(
        self, opened: Granted | Unopened, with_refresh_token: bool
    ) -> tuple[LeaseGrant | None, bool]:
        """A next session's grant handed out, or (None, whether Garmin was asked) when it
        was skipped.

        A due session whose central refresh Garmin rejects is invalidated and skipped, and
        so is one whose lease ended during that refresh (deleted, or signed in again), and
        one whose garth exchange Garmin refused in doubt (kept, GarminRefusalInDoubt): the
        worker asked for "the next session", not for that user, so it gets the next one.
        (So LeaseNextSession never answers LEASE_LOST: see services.lease_handover.) So is
        one whose stored session fails to open: one such row must not stop every worker's
        queue."""
        try:
            usable = self._usable(opened)
            return self._refresh.hand_out(usable, with_refresh_token=with_refresh_token), False
        except (SecretUnreadable, SessionNotActive):
            log.info("due session's stored session cannot be opened; leasing the next one")
            return None, False
        except GarminRateLimited as limited:
            if not limited.only_this_account:
                raise  # Garmin's own 429, or an endpoint's breaker: every grant waits
            # That account waits out Garmin's 429, not the others: the worker asked for
            # "the next session", and the grant was released as the row's sync attempt.
            log.info("due session's account waits out Garmin's 429; leasing the next one")
            return None, False
        except GarminSessionRejected:
            log.info("due session rejected by Garmin at refresh; leasing the next one")
        except GarminRefusalInDoubt:
            # Garmin answered 401 to that session's exchange, maybe meaning our consumer or
            # clock (exchange_refusals): kept, but no outage either. Every due dead garth
            # session would otherwise answer GARMIN_UNAVAILABLE in turn, and a worker's run
            # stops after a few of those, with the users behind them (DI ones) unsynced.
            log.info("due garth session's exchange refused in doubt; leasing the next one")
        except LeaseLost:
            log.info("due session's lease ended during its refresh; leasing the next one")
        return None, True

    def next_violations(
        self, holder: str, ttl: timedelta | None, min_sync_interval: timedelta | None
    ) -> list[FieldViolation]:
        """What is wrong with a LeaseNextSession's own fields."""
        return [
            *check_holder(holder),
            *self._ttl_violations(ttl),
            *check_duration(
                min_sync_interval,
                "min_sync_interval",
                minimum=timedelta(0),
                maximum=MAX_MIN_SYNC_INTERVAL,
            ),
        ]

    # --- the holder's calls ----------------------------------------------------------

    def renew_lease(
        self, lease_id: str, ttl: timedelta | None, *, user_id_prefix: str | None = None
    ) -> LeaseView:
        """Extend a live lease to now + ttl (of a user the caller's `user_id_prefix` covers,
        when given: validation.in_scope)."""
        raise_if_any(check_opaque_id(lease_id, "lease_id"), self._ttl_violations(ttl))
        digest = lease_digest(lease_id)
        with self._uow.single_write() as uow:
            # The UPDATE matches only a live lease that this caller obtained (lease_holders),
            # and records the renewal; a refusal writes nothing.
            row = uow.leases.renew(
                digest,
                caller=audit.caller_name(),
                now=uow.now,
                expires_at=uow.now + self._lifetime(ttl),
                user_id_prefix=user_id_prefix,
                record_as=AuditedRpc.RENEW_LEASE,
            )
            lease = _live_lease(row, uow.now)
            # The holder presented the id: its own answer may name it.
            return dataclasses.replace(lease, lease_id=lease_id)

    def release_lease(
        self,
        lease_id: str,
        synced_through: datetime | None,
        garmin_retry_after: timedelta | None = None,
        *,
        user_id_prefix: str | None = None,
    ) -> SessionStatusView:
        """End a live lease; synced_through set means the sync succeeded up to then;
        garmin_retry_after set means the sync stopped at Garmin's 429 on the Connect API,
        which asked for that wait (the account's cooldown starts with the release, for a
        user within the caller's `user_id_prefix`)."""
        raise_if_any(self.release_violations(lease_id, synced_through, garmin_retry_after))
        return self.release_checked(
            lease_id, synced_through, garmin_retry_after, user_id_prefix=user_id_prefix
        )

    def release_checked(
        self,
        lease_id: str,
        synced_through: datetime | None,
        garmin_retry_after: timedelta | None = None,
        *,
        user_id_prefix: str | None = None,
    ) -> SessionStatusView:
        """release_lease, for fields already checked (release_violations found none)."""
        digest = lease_digest(lease_id)
        if garmin_retry_after is not None:
            return self._release_rate_limited(
                digest, synced_through, garmin_retry_after, user_id_prefix
            )
        with self._uow.single_write() as uow:
            # The UPDATE matches only a live lease that this caller obtained (lease_holders),
            # and records the release; a refusal writes nothing.
            row = uow.leases.release(
                digest,
                caller=audit.caller_name(),
                now=uow.now,
                synced_through=synced_through,
                record_as=AuditedRpc.RELEASE_LEASE,
            )
            if row is None:
                raise _lease_lost()
            return status_view(row, uow.now)

    def _release_rate_limited(
        self,
        digest: str,
        synced_through: datetime | None,
        retry_after: timedelta,
        user_id_prefix: str | None,
    ) -> SessionStatusView:
        """The release, and the account's cooldown after the Connect API's 429 that ended
        the sync (capped as the service's own: GarminGate.reported_429), in one transaction:
        no replica grants the user, nor calls Garmin for it, until the cooldown ends. A
        caller whose scope no longer covers the user only gives it back (as its renewals
        and reports are refused): it holds the user back from nobody."""
        rpc = AuditedRpc.RELEASE_LEASE
        with self._uow() as uow:
            row = uow.leases.release(
                digest,
                caller=audit.caller_name(),
                now=uow.now,
                synced_through=synced_through,
                record_as=rpc,
            )
            if row is None:
                raise _lease_lost()
            if in_scope(row.user_id, user_id_prefix):
                self._gate.reported_429(
                    uow, row.user_id, GarminEndpoint.CONNECT_API, retry_after.total_seconds(), rpc
                )
            else:
                log.info(
                    "a 429 reported for user %s outside the caller's scope; not held", row.user_id
                )
            return status_view(row, uow.now)

    def release_violations(
        self,
        lease_id: str,
        synced_through: datetime | None,
        garmin_retry_after: timedelta | None = None,
        *,
        fields: str = "",
    ) -> list[FieldViolation]:
        """What is wrong with a release's fields (their names prefixed with `fields`)."""
        return [
            *check_opaque_id(lease_id, f"{fields}lease_id"),
            *_synced_through_violations(synced_through, self._uow.now(), f"{fields}synced_through"),
            *_retry_after_violations(garmin_retry_after, f"{fields}garmin_retry_after"),
        ]

    def report_refreshed(
        self,
        lease_id: str,
        tokens: GarminTokens,
        *,
        session_version: int = 0,
        user_id_prefix: str | None = None,
    ) -> SessionStatusView:
        """Store tokens the holder refreshed by itself. Only a live lease's holder may, only
        tokens of the stored session's account, and only a refresh of the stored session's
        version (`session_version`; 0: unknown, allowed for garth sessions alone)."""
        raise_if_any(
            check_opaque_id(lease_id, "lease_id"),
            check_reported_version(tokens, session_version),
        )
        digest = lease_digest(lease_id)
        with self._uow() as uow:
            # The ciphertext is bound to the user's row: find the user the lease names, then
            # store conditionally (the UPDATE re-checks the lease and the user, so a lease
            # that died in between changes nothing).
            leased = held_by_caller(uow, lease_id, user_id_prefix)
            row = None
            if leased is not None:
                check_same_account(uow.sessions.open_tokens(leased), tokens)
                # Against the row locked for the store, not the one read above: a rotation
                # committed in between would otherwise let a report of the version it
                # replaced put back the refresh token it killed.
                locked = uow.sessions.lock(leased.user_id)
                # A lease that ended in between (an import or login replaced the session) is
                # LEASE_LOST whatever the version: the holder must stop, not mend its report.
                if locked is not None and live_lease_of(locked, digest, uow.now) is not None:
                    check_refresh_of(locked.session_version, session_version)
                    stored = uow.sessions.open_tokens(locked)
                    check_not_rotated_away(locked, stored, tokens)
                    row = uow.leases.store_refreshed(
                        digest,
                        locked=locked,
                        tokens=_stated_lifetime_kept(_oauth1_kept(tokens, stored), stored),
                        now=uow.now,
                    )
            status = _reported(uow, AuditedRpc.REPORT_REFRESHED, digest, row)
        if status is None:
            raise _lease_lost()
        log.debug("refreshed tokens stored for user %s by its lease holder", status.user_id)
        return status

    def report_invalidated(
        self,
        lease_id: str,
        reason: str,
        *,
        session_version: int = 0,
        user_id_prefix: str | None = None,
    ) -> SessionStatusView:
        """Garmin definitely rejected the session: AUTH_EXPIRED, secrets wiped, lease ended.
        Not when Garmin refused the access token of another version than the stored one
        (`session_version`; 0: unknown): the service refreshed the session since, and a
        refusal of a replaced token says nothing of the session (INVALID_ARGUMENT).

        Nor while a refresh of the version refused is out at Garmin (the holder's other
        request's RefreshLease, say): the report waits for it, as a refresh would. If Garmin
        rotated the pair, the session lives and the report is of a replaced version; ended
        under it, the session would lose the pair Garmin just issued. A report of an unknown
        version (0) counts as one of the version it first found."""
        raise_if_any(
            check_opaque_id(lease_id, "lease_id"),
            check_reason(reason),
            check_known_version(session_version),
        )
        digest = lease_digest(lease_id)
        outcome = self._refresher.after_refresh_under_way(
            lambda under_way: self._invalidate_unless_refreshing(
                lease_id, digest, reason, session_version, user_id_prefix, under_way
            )
        )
        if outcome is None:
            raise _lease_lost()
        log.info("session of user %s invalidated by its lease holder", outcome.user_id)
        return outcome

    def _invalidate_unless_refreshing(
        self,
        lease_id: str,
        digest: str,
        reason: str,
        session_version: int,
        user_id_prefix: str | None,
        waited_for: RefreshUnderWay | None,
    ) -> SessionStatusView | RefreshUnderWay | None:
        """One try at report_invalidated's write: the status it left (None: the lease is
        gone); or, when a first try (`waited_for` None) finds a refresh of the version
        refused out at Garmin, that RefreshUnderWay, before any write. The try after the
        wait takes the version the first one found: a report of an unknown version (0)
        counts as one of it."""
        if waited_for is not None:
            session_version = waited_for.version
        with self._uow() as uow:
            row = None
            leased = held_by_caller(uow, lease_id, user_id_prefix)
            if leased is not None:
                # Against the row locked for the write: a refresh committed in between moves
                # the session past the version refused.
                locked = uow.sessions.lock(leased.user_id)
                if locked is not None and live_lease_of(locked, digest, uow.now) is not None:
                    check_refresh_of(locked.session_version, session_version)
                    if waited_for is None and refresh_claimed(locked, uow.now):
                        return RefreshUnderWay(locked.user_id, locked.session_version)
                row = uow.leases.invalidate(digest, now=uow.now, reason=reason)
            return _reported(uow, AuditedRpc.REPORT_INVALIDATED, digest, row)

    # --- helpers -----------------------------------------------------------------------

    def _ttl_violations(self, ttl: timedelta | None) -> list[FieldViolation]:
        return check_duration(
            ttl,
            "ttl",
            minimum=timedelta(seconds=self._settings.min_ttl),
            maximum=timedelta(seconds=self._settings.max_ttl),
        )

    def _lifetime(self, ttl: timedelta | None) -> timedelta:
        return ttl if ttl is not None else timedelta(seconds=self._settings.default_ttl)

    def _usable(self, opened: Granted | Unopened) -> Granted:
        """A grant is committed before its session is opened (its statement runs alone): one
        whose session cannot be opened is released at once, as a sync attempt with the
        failure in the audit trail, so it neither holds the session for nobody nor stays
        the most overdue row that every LeaseNextSession picks."""
        if isinstance(opened, Granted):
            return opened
        self._refresh.release_unused(opened.lease, opened.rpc, opened.error)
        raise opened.error


@dataclass(frozen=True)
class Unopened:
    """A committed grant whose stored session cannot be handed out."""

    lease: LeaseView
    rpc: AuditedRpc
    # SecretUnreadable or SessionNotActive: the stored session; anything else: a bug.
    error: Exception


def _opened(
    uow: UnitOfWork, grant: GrantedRow, rpc: AuditedRpc, lease_id: str
) -> Granted | Unopened:
    """Views of a freshly granted row and its opened session (the grant's statement recorded
    it), or, when they cannot be built, the lease to release. The row holds only the lease
    id's digest: the id itself goes into the holder's answer from here, and nowhere else."""
    row = grant.row
    if grant.took_over:
        # The row still named a lease that expired without being released.
        service_events().lease_taken_over()
    lease = dataclasses.replace(_live_lease(row, uow.now), lease_id=lease_id)
    if row.session_ciphertext is None:
        # An ACTIVE row always holds a session; if not, no token can be handed out.
        return Unopened(lease, rpc, SessionNotActive("the session holds no tokens; log in again"))
    try:
        tokens = uow.sessions.open_tokens(row)
        status = dataclasses.replace(status_view(row, uow.now), lease=lease)
    except Exception as exc:  # noqa: BLE001 - the grant is committed: any failure releases it
        return Unopened(lease, rpc, exc)
    log.debug("lease granted on user %s (fencing token %d)", row.user_id, row.fencing_token)
    return Granted(
        grant=LeaseGrant(lease=lease, tokens=tokens, status=status),
        session_version=row.session_version,
        rpc=rpc,
        refresh_in_flight=refresh_claimed(row, uow.now),
    )


def _reported(
    uow: UnitOfWork, rpc: AuditedRpc, digest: str, row: SessionRow | None
) -> SessionStatusView | None:
    """Record a holder's report: its change, or (None) the refusal of a holder without a live
    lease, which is committed too and answered LEASE_LOST once the transaction ends."""
    if row is None:
        uow.audit.record_lease_lost(rpc, digest)
        return None
    lease = LeaseRef(digest, row.fencing_token)
    status = status_view(row, uow.now)
    uow.audit.record(rpc, audit.OK, user_id=row.user_id, lease=lease, leaves=status)
    return status


def _live_lease(row: SessionRow | None, now: datetime) -> LeaseView:
    lease = None if row is None else live_lease(row, now)
    if lease is None:
        raise _lease_lost()
    return lease


def _oauth1_kept(reported: GarminTokens, stored: GarminTokens) -> GarminTokens:
    """The reported garth session with the stored OAuth1 token: an exchange never changes it,
    and check_same_account has vouched that its token, secret and MFA token are the stored
    ones; the rest (the MFA token's expiry Garmin stated at sign-in) stays the service's
    record, whatever a holder's copy lost on the way."""
    if stored.oauth1 is None or reported.oauth1 is None:
        return reported
    return dataclasses.replace(reported, oauth1=stored.oauth1)


def _stated_lifetime_kept(reported: GarminTokens, stored: GarminTokens) -> GarminTokens:
    """The reported pair, with the refresh lifetime Garmin last stated for the session when
    the report carries none (GarminSession has no field for it): refresh answers seldom state
    it, and without it the service's next rotation would stamp the default (30 days) on a
    token Garmin said lives shorter, so keep-alive would come after it died. Same client id
    only (check_same_account has vouched for the account): a lifetime is the client's."""
    if (
        reported.refresh_token_lifetime_seconds is not None
        or reported.di_client_id is None
        or reported.di_client_id != stored.di_client_id
    ):
        return reported
    return dataclasses.replace(
        reported, refresh_token_lifetime_seconds=stored.refresh_token_lifetime_seconds
    )


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


def _retry_after_violations(value: timedelta | None, field: str) -> list[FieldViolation]:
    """Garmin's wait: none is no 429, zero one without a wait (the default wait applies),
    and any length is capped where it is applied (GarminGate.reported_429)."""
    if value is not None and value < timedelta(0):
        return [FieldViolation(field, "must not be negative")]
    return []


def _synced_through_violations(
    value: datetime | None, now: datetime, field: str
) -> list[FieldViolation]:
    if value is None:
        return []
    if value.tzinfo is None:
        return [FieldViolation(field, "must carry a time zone")]
    if value > now + SYNCED_THROUGH_SKEW:
        return [FieldViolation(field, "must not be in the future")]
    return []
