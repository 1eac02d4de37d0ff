"""Central refresh at grant time: a lease is handed out with a session that outlives it.

A grant whose stored access token would expire before the lease does (or, for a DI session,
whose refresh token would die by then) is refreshed here, after the grant, through the
single-flight refresher (auth_service.services.session_refresh): only the new holder's request
talks to Garmin, and never at the same time as another replica's refresh of the session. The
refreshed tokens are stored before they are handed out, even if the lease ended meanwhile
(they are the session's, and a rotated DI pair must never be dropped); the holder then gets
LEASE_LOST.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from auth_service.domain import audit
from auth_service.domain.audit import AuditedRpc
from auth_service.domain.errors import (
    GarminRateLimited,
    GarminUnavailable,
    LeaseLost,
    SessionNotActive,
)
from auth_service.domain.models import LeaseGrant, LeaseView
from auth_service.domain.policies import refresh_due
from auth_service.domain.views import live_lease_of, status_view
from auth_service.services.lease_holders import ended_or_lost
from auth_service.services.session_refresh import (
    RefreshAsker,
    RefreshedWithoutAccess,
    SessionRefresher,
    StillRefreshingElsewhere,
)
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
    # Another refresh of this session (keep-alive, a validation) held its claim at the grant:
    # the refresh token read with the grant may be rotating away right now.
    refresh_in_flight: bool = False


class CentralRefresh:
    """Hands out grants, refreshing their session first when it would expire during the
    lease."""

    def __init__(self, uow: UnitsOfWork, refresher: SessionRefresher) -> None:
        self._uow = uow
        self._refresher = refresher

    def hand_out(self, granted: Granted, *, with_refresh_token: bool = True) -> LeaseGrant:
        """`with_refresh_token`: whether the holder is handed the whole session (worker_full),
        not just the access token."""
        grant = granted.grant
        joins = granted.refresh_in_flight and with_refresh_token
        if not joins and not refresh_due(grant.tokens, grant.lease.expires_at):
            return grant
        # Due, or under way elsewhere while this holder gets the refresh token: the refresher
        # joins a refresh in flight (waits for its claim and hands out the pair it stored), so
        # no holder ever gets a refresh token that a rotation is killing. A holder of the
        # access token alone does not wait: that token stays valid through the rotation, and
        # a claim left by a replica killed inside Garmin lives for minutes.
        asker = RefreshAsker(granted.rpc, reason_for=lambda _message: CENTRAL_REFRESH_REJECTED)
        try:
            # Only while the grant's lease lives (a wait on another's claim may outlast it).
            refreshed = self._refresher.refresh(
                grant.lease.user_id,
                granted.session_version,
                asker,
                held_by=grant.lease.lease_digest,
            )
        except RefreshedWithoutAccess as exc:
            # Rotated and stored, but with no access token to hand out: the grant's tokens
            # hold the refresh token that rotation killed, so they go to no one either. The
            # holder tries again; the next grant refreshes with the live refresh token.
            self.release_unused(grant.lease, granted.rpc, exc)
            raise
        except (GarminRateLimited, GarminUnavailable) as exc:
            gave_up_waiting = isinstance(exc, StillRefreshingElsewhere)
            if grant.tokens.oauth2.expires_at > self._uow.now() and not (
                gave_up_waiting and with_refresh_token
            ):
                # Garmin is busy, not saying no: the current token still works for now,
                # and the holder asks RefreshLease for a new one when Garmin refuses it.
                log.warning(
                    "central refresh for user %s failed (%s); handing out the current token",
                    grant.lease.user_id,
                    type(exc).__name__,
                )
                return grant
            # Expired; or the holder would get a refresh token that another replica's
            # rotation, unfinished past our wait, may have killed at Garmin already.
            self.release_unused(grant.lease, granted.rpc, exc)
            raise
        except SessionNotActive:
            # Rejected by Garmin while the grant waited on another's refresh (answered as
            # that refresh answers), or deleted or replaced meanwhile, which ended our lease.
            raise ended_or_lost(self._uow, grant.lease.user_id) from None
        except Exception as exc:
            # Rejected (the session ended, our lease with it), or unexpected: do not leave
            # the session stuck under a lease nobody will use.
            self.release_unused(grant.lease, granted.rpc, exc)
            raise
        now = self._uow.now()
        lease = live_lease_of(refreshed.row, grant.lease.lease_digest, now)
        if lease is None:
            # Expired, or the user logged in again meanwhile (which ended the lease).
            raise _lease_lost()
        # The row holds the digest: the holder's answer carries the id from the grant.
        lease = dataclasses.replace(lease, lease_id=grant.lease.lease_id)
        return LeaseGrant(
            lease=lease,
            tokens=refreshed.tokens,
            status=dataclasses.replace(status_view(refreshed.row, now), lease=lease),
        )

    def release_unused(self, lease: LeaseView, rpc: AuditedRpc, failure: BaseException) -> None:
        """Release a lease we granted but cannot hand out; counts as a sync attempt so a
        queue-draining worker moves on to the next user instead of hammering Garmin. The
        release's audit event carries the failure, under the granting RPC."""
        with self._uow() as uow:
            # Still in the granting RPC: its caller obtained the lease.
            row = uow.leases.release(
                lease.lease_digest, caller=audit.caller_name(), now=uow.now, synced_through=None
            )
            if row is not None:
                uow.audit.record(
                    rpc, audit.outcome_of(failure), user_id=row.user_id, lease=lease, changed=True
                )


def _lease_lost() -> LeaseLost:
    return LeaseLost("the lease ended while the session was being refreshed")
