"""Central refresh: a lease is handed out with a token that outlives it.

A grant whose stored OAuth2 token would expire before the lease does is refreshed here, after
the grant, so only the new holder's request talks to Garmin (several workers asking at once:
one grant, one exchange). Garmin is called outside any transaction; its answer is stored only
if the lease is still ours and the session version unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from auth_service.domain import audit
from auth_service.domain.audit import AuditedRpc
from auth_service.domain.errors import (
    GarminRateLimited,
    GarminSessionRejected,
    GarminUnavailable,
    LeaseLost,
)
from auth_service.domain.models import GarminTokens, LeaseGrant
from auth_service.domain.ports import GarminUpstream
from auth_service.domain.views import live_lease, status_view
from auth_service.services.unit_of_work import UnitsOfWork

log = logging.getLogger(__name__)

CENTRAL_REFRESH_REJECTED = "Garmin rejected the session when the service refreshed it"


@dataclass(frozen=True)
class Granted:
    """A grant as committed, with the session version its tokens belong to and the RPC that
    asked for it (the audit trail names it on the central refresh's events too)."""

    grant: LeaseGrant
    session_version: int
    rpc: AuditedRpc


class CentralRefresh:
    """Hands out grants, refreshing their token first when it would expire during the lease."""

    def __init__(self, uow: UnitsOfWork, upstream: GarminUpstream) -> None:
        self._uow = uow
        self._upstream = upstream

    def hand_out(self, granted: Granted) -> LeaseGrant:
        grant = granted.grant
        if grant.tokens.oauth2.expires_at > grant.lease.expires_at:
            return grant
        try:
            # Outside any transaction: nothing is locked while Garmin answers.
            fresh = self._upstream.refresh(grant.tokens)
        except GarminSessionRejected as rejected:
            self._invalidate_rejected(granted, rejected)
            raise
        except (GarminRateLimited, GarminUnavailable) as exc:
            if grant.tokens.oauth2.expires_at > self._uow.now():
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

    def _store_fresh(self, granted: Granted, fresh: GarminTokens) -> LeaseGrant:
        lease = granted.grant.lease
        with self._uow() as uow:
            row = uow.leases.store_refreshed(
                lease.lease_id,
                user_id=lease.user_id,
                tokens=fresh,
                now=uow.now,
                expected_version=granted.session_version,
            )
            renewed = None if row is None else live_lease(row, uow.now)
            if row is None or renewed is None:
                # Expired, or the user logged in again meanwhile: the new session wins and
                # these tokens are dropped.
                raise LeaseLost("the lease ended while the session was being refreshed")
            uow.audit.record(granted.rpc, audit.SESSION_REFRESHED, user_id=row.user_id, lease=lease)
            return LeaseGrant(lease=renewed, tokens=fresh, status=status_view(row, uow.now))

    def _invalidate_rejected(self, granted: Granted, rejected: GarminSessionRejected) -> None:
        lease = granted.grant.lease
        with self._uow() as uow:
            row = uow.leases.invalidate(
                lease.lease_id,
                now=uow.now,
                reason=CENTRAL_REFRESH_REJECTED,
                expected_version=granted.session_version,
            )
            if row is not None:
                # What LeaseSession answers (SESSION_NOT_ACTIVE); LeaseNextSession moves on.
                uow.audit.record(
                    granted.rpc, audit.outcome_of(rejected), user_id=row.user_id, lease=lease
                )
        if row is None:
            # The session changed under us (new login, or our lease expired and was taken
            # over): the rejected tokens may no longer be the stored ones.
            raise LeaseLost("the lease ended while the session was being refreshed")
        log.info("session of user %s invalidated: Garmin rejected its refresh", lease.user_id)

    def _release_unused(self, granted: Granted, failure: BaseException) -> None:
        """Release a lease we granted but cannot hand out; counts as a sync attempt so a
        queue-draining worker moves on to the next user instead of hammering Garmin."""
        lease = granted.grant.lease
        with self._uow() as uow:
            row = uow.leases.release(lease.lease_id, now=uow.now, synced_through=None)
            if row is not None:
                uow.audit.record(
                    granted.rpc, audit.outcome_of(failure), user_id=row.user_id, lease=lease
                )
