"""RefreshLease: a fresh access token for a live lease's holder, one refresh per version.

Workers get access tokens only (issue 13), so when Garmin refuses one mid-sync the holder asks
here instead of refreshing by itself. The holder says which session version its token came
with: when the stored session has already moved past it (another call refreshed meanwhile)
and its token still works, that token is the answer and Garmin is not called. Otherwise the
single-flight refresher (auth_service.services.session_refresh) refreshes the stored version:
any number of calls at once, on any replica, cause one refresh at Garmin, and the pair is
stored before anyone gets its access token.
"""

from __future__ import annotations

from dataclasses import dataclass

from auth_service.domain.audit import AuditedRpc
from auth_service.domain.errors import LeaseLost, SessionNotActive
from auth_service.domain.lease_ids import lease_digest, matches
from auth_service.domain.models import GarminTokens, SessionStatusView
from auth_service.domain.policies import ACCESS_EXPIRY_MARGIN
from auth_service.domain.validation import check_opaque_id, raise_if_any
from auth_service.domain.views import SessionRow, live_lease, status_view
from auth_service.services.lease_holders import check_known_version, ended_or_lost, held_by_caller
from auth_service.services.session_refresh import RefreshAsker, SessionRefresher
from auth_service.services.unit_of_work import UnitsOfWork

REFRESH_LEASE_REJECTED = "Garmin rejected the session's refresh for its lease holder"
# A holder that got a 401 asks from every request it had in flight at once: garth sessions
# are claimed too, so a burst of them is one exchange at Garmin (the promise).
_ASKER = RefreshAsker(
    AuditedRpc.REFRESH_LEASE,
    # The domain error's message names the step and HTTP status, never a secret.
    reason_for=lambda message: f"{REFRESH_LEASE_REJECTED} ({message})",
    claims_every_kind=True,
)


@dataclass(frozen=True)
class AccessGrant:
    """The session's tokens in force (the API layer sends the holder only the access token)
    and its status, whose session_version the token belongs to."""

    tokens: GarminTokens
    status: SessionStatusView


class LeaseRefresh:
    """RefreshLease."""

    def __init__(self, uow: UnitsOfWork, refresher: SessionRefresher) -> None:
        self._uow = uow
        self._refresher = refresher

    def refresh_lease(
        self, lease_id: str, session_version: int, *, user_id_prefix: str | None = None
    ) -> AccessGrant:
        """The holder's token of `session_version` stopped working: answer a fresh one."""
        raise_if_any(check_opaque_id(lease_id, "lease_id"), check_known_version(session_version))
        row, tokens = self._held(lease_id, user_id_prefix)
        usable_until = self._uow.now() + ACCESS_EXPIRY_MARGIN
        known = session_version > 0  # 0: the holder does not know its token's version
        if (
            known
            and row.session_version > session_version
            and tokens.oauth2.expires_at > usable_until
        ):
            # Refreshed since the holder's token was issued: one refresh served every caller.
            # (Without a version the stored token may be the very one Garmin just refused:
            # handed back, its next 401 would read as a definite rejection.)
            return AccessGrant(tokens, status_view(row, self._uow.now()))
        try:
            # Only while this lease lives: the call may wait (a refresh slot, another's
            # claim) past its end, and a new holder's refresh token must not be rotated.
            refreshed = self._refresher.refresh(
                row.user_id, row.session_version, _ASKER, held_by=lease_digest(lease_id)
            )
        except SessionNotActive:
            # Rejected by Garmin while this call waited on the refresh that met the rejection
            # (answered as that refresh answers), or deleted or replaced by a login meanwhile,
            # which ended the lease.
            raise ended_or_lost(self._uow, row.user_id) from None
        now = self._uow.now()
        lease = live_lease(refreshed.row, now)
        if lease is None or not matches(lease.lease_digest, lease_id):
            # The lease ended while Garmin answered; the refreshed pair is stored all the same.
            raise _lease_lost()
        return AccessGrant(refreshed.tokens, status_view(refreshed.row, now))

    def _held(self, lease_id: str, user_id_prefix: str | None) -> tuple[SessionRow, GarminTokens]:
        with self._uow() as uow:
            row = held_by_caller(uow, lease_id, user_id_prefix)
            if row is None:
                raise _lease_lost()
            return row, uow.sessions.open_tokens(row)


def _lease_lost() -> LeaseLost:
    return LeaseLost("the lease is expired, released, taken over or unknown")
