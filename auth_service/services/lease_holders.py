"""Who may act on a lease, and on which account's tokens (issue 13: least privilege).

A lease is bound to the authenticated caller that obtained it: a holder call from any other
caller answers LEASE_LOST, exactly as for a lease that never existed, so a lease id that leaked
to another worker is worth nothing. A holder that reports refreshed tokens may only report the
stored session's account: swapping in another account's session would hand this user's syncs
(and this user's lease) to someone else's Garmin data.
"""

from __future__ import annotations

from auth_service.domain import audit
from auth_service.domain.errors import FieldViolation, InvalidArgument
from auth_service.domain.lease_ids import lease_digest, matches
from auth_service.domain.models import GarminTokens
from auth_service.domain.views import SessionRow
from auth_service.services.unit_of_work import UnitOfWork


def held_by_caller(uow: UnitOfWork, lease_id: str) -> SessionRow | None:
    """The row `lease_id` holds live, if the calling caller obtained that lease; else None.

    Read in the caller's transaction, before its conditional UPDATE by lease id: a lease id
    names one grant, whose caller never changes, so the check cannot go stale. The row is
    found by the id's digest (the only thing stored) and the digests compared again in
    constant time."""
    row = uow.leases.find_by_lease(lease_digest(lease_id), uow.now)
    if row is None or not matches(row.lease_id, lease_id):
        return None
    if row.lease_caller != audit.caller_name():
        return None
    return row


def check_same_account(stored: GarminTokens, reported: GarminTokens) -> None:
    """Refuse (INVALID_ARGUMENT) tokens that are not a refresh of the stored session: another
    OAuth1 token (garth), another DI client id, or another kind of session."""
    if stored.kind is not reported.kind:
        raise InvalidArgument([FieldViolation("session", "is not the leased session's kind")])
    if stored.oauth1 is not None and reported.oauth1 is not None:
        if stored.oauth1.oauth_token != reported.oauth1.oauth_token:
            raise InvalidArgument(
                [FieldViolation("session.oauth1", "is not the leased session's OAuth1 token")]
            )
    elif stored.di_client_id != reported.di_client_id:
        raise InvalidArgument(
            [FieldViolation("session.di_client_id", "is not the leased session's client id")]
        )
