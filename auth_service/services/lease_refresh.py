"""RefreshLease: a fresh access token for a live lease's holder, one refresh per version.

Workers get access tokens only (issue 13), so when Garmin refuses one mid-sync the holder asks
here instead of refreshing by itself. The holder says which session version its token came
with: when the stored session has already moved past it (another call refreshed meanwhile)
and its token still works, that token is the answer and Garmin is not called. Otherwise the
service refreshes, outside any transaction, and stores the answer only if the lease is still
the caller's and the session version unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from auth_service.domain import audit
from auth_service.domain.audit import AuditedRpc, LeaseRef
from auth_service.domain.errors import FieldViolation, GarminSessionRejected, LeaseLost
from auth_service.domain.models import GarminTokens, SessionStatusView
from auth_service.domain.ports import GarminUpstream
from auth_service.domain.validation import check_opaque_id, raise_if_any
from auth_service.domain.views import SessionRow, status_view
from auth_service.services.lease_holders import held_by_caller
from auth_service.services.unit_of_work import UnitsOfWork

log = logging.getLogger(__name__)

REFRESH_LEASE_REJECTED = "Garmin rejected the session's refresh for its lease holder"


@dataclass(frozen=True)
class AccessGrant:
    """The session's tokens in force (the API layer sends the holder only the access token)
    and its status, whose session_version the token belongs to."""

    tokens: GarminTokens
    status: SessionStatusView


@dataclass(frozen=True)
class _Held:
    row: SessionRow
    current: AccessGrant


class LeaseRefresh:
    """RefreshLease."""

    def __init__(self, uow: UnitsOfWork, upstream: GarminUpstream) -> None:
        self._uow = uow
        self._upstream = upstream

    def refresh_lease(self, lease_id: str, session_version: int) -> AccessGrant:
        """The holder's token of `session_version` stopped working: answer a fresh one."""
        raise_if_any(
            check_opaque_id(lease_id, "lease_id"),
            [FieldViolation("session_version", "must not be negative")]
            if session_version < 0
            else [],
        )
        held = self._held(lease_id)
        current = held.current
        if held.row.session_version > session_version and self._still_valid(current.tokens):
            # Refreshed since the holder's token was issued: one refresh served every caller.
            return current
        try:
            # Outside any transaction: nothing is locked while Garmin answers.
            fresh = self._upstream.refresh(current.tokens)
        except GarminSessionRejected as rejected:
            self._invalidate(lease_id, held.row, rejected)
            raise
        return self._store(lease_id, held.row, fresh)

    def _held(self, lease_id: str) -> _Held:
        with self._uow() as uow:
            row = held_by_caller(uow, lease_id)
            if row is None:
                raise _lease_lost()
            tokens = uow.sessions.open_tokens(row)
            return _Held(row, AccessGrant(tokens, status_view(row, uow.now)))

    def _still_valid(self, tokens: GarminTokens) -> bool:
        return tokens.oauth2.expires_at > self._uow.now()

    def _store(self, lease_id: str, held: SessionRow, fresh: GarminTokens) -> AccessGrant:
        with self._uow() as uow:
            row = uow.leases.store_refreshed(
                lease_id,
                user_id=held.user_id,
                tokens=fresh,
                now=uow.now,
                expected_version=held.session_version,
            )
            if row is not None:
                lease = LeaseRef(lease_id, row.fencing_token)
                uow.audit.record(
                    AuditedRpc.REFRESH_LEASE,
                    audit.SESSION_REFRESHED,
                    user_id=row.user_id,
                    lease=lease,
                )
                return AccessGrant(fresh, status_view(row, uow.now))
        # The lease ended, or the session changed meanwhile (a login, an import, another
        # refresh): what is stored now wins, if the lease is still the caller's.
        return self._held(lease_id).current

    def _invalidate(self, lease_id: str, held: SessionRow, rejected: GarminSessionRejected) -> None:
        with self._uow() as uow:
            row = uow.leases.invalidate(
                lease_id,
                now=uow.now,
                # The domain error's message names the step and HTTP status, never a secret.
                reason=f"{REFRESH_LEASE_REJECTED} ({rejected})",
                expected_version=held.session_version,
            )
            if row is not None:
                lease = LeaseRef(lease_id, row.fencing_token)
                uow.audit.record(
                    AuditedRpc.REFRESH_LEASE,
                    audit.outcome_of(rejected),
                    user_id=row.user_id,
                    lease=lease,
                )
        if row is None:
            # The session changed under us: the rejected tokens may not be the stored ones.
            raise _lease_lost()
        log.info("session of user %s invalidated: Garmin rejected its refresh", held.user_id)


def _lease_lost() -> LeaseLost:
    return LeaseLost("the lease is expired, released, taken over or unknown")
