"""Who may act on a lease, and on which account's tokens (issue 13: least privilege).

A lease is bound to the authenticated caller that obtained it: a holder call from any other
caller answers LEASE_LOST, exactly as for a lease that never existed, so a lease id that leaked
to another worker is worth nothing. A holder that reports refreshed tokens may only report the
stored session's account: swapping in another account's session would hand this user's syncs
(and this user's lease) to someone else's Garmin data.
"""

from __future__ import annotations

from auth_service.domain import audit
from auth_service.domain.errors import FieldViolation, InvalidArgument, LeaseLost, SessionNotActive
from auth_service.domain.jwt_payload import di_account, di_issued_at
from auth_service.domain.lease_ids import lease_digest, matches
from auth_service.domain.models import GarminTokens, OAuth1Token, SessionKind, SessionState
from auth_service.domain.validation import in_scope, raise_if_any
from auth_service.domain.views import SessionRow, rotated_away
from auth_service.services.unit_of_work import UnitOfWork, UnitsOfWork


def held_by_caller(
    uow: UnitOfWork, lease_id: str, user_id_prefix: str | None = None
) -> SessionRow | None:
    """The row `lease_id` holds live, if the calling caller obtained that lease and its
    scope (`user_id_prefix`, as the callers file says now) still covers the user; else None.

    Read in the caller's transaction, before its conditional UPDATE by lease id: a lease id
    names one grant, whose caller never changes, so the check cannot go stale. The row is
    found by the id's digest (the only thing stored) and the digests compared again in
    constant time."""
    row = uow.leases.find_by_lease(lease_digest(lease_id), uow.now)
    if row is None or not matches(row.lease_id, lease_id):
        return None
    if row.lease_caller != audit.caller_name():
        return None
    # Checked on every holder call, not only at the grant: an operator who narrows a
    # caller's scope in the callers file takes the other users' leases from it at once
    # (LEASE_LOST), save their release.
    if not in_scope(row.user_id, user_id_prefix):
        return None
    return row


def check_reported_version(reported: GarminTokens, session_version: int) -> list[FieldViolation]:
    """A DI report must say which version it refreshed: DI refresh tokens rotate, so a report
    of a session the service refreshed since carries a dead refresh token, and storing it
    would lose the live one (the session's next refresh: invalid_grant)."""
    if negative := check_known_version(session_version):
        return negative
    if session_version == 0 and reported.kind is SessionKind.DI_OAUTH2:
        return [FieldViolation("session_version", "is required for a DI session")]
    return []


def check_known_version(session_version: int) -> list[FieldViolation]:
    """A version a holder names (0: unknown) is never negative."""
    if session_version < 0:
        return [FieldViolation("session_version", "must not be negative")]
    return []


def check_refresh_of(stored_version: int, session_version: int) -> None:
    """Refuse (INVALID_ARGUMENT) a report of another version than the stored one (0: not
    checked): the service refreshed the session since the holder's copy."""
    if session_version and session_version != stored_version:
        raise InvalidArgument(
            [
                FieldViolation(
                    "session_version",
                    f"is {session_version}, the stored session is at {stored_version}: it "
                    "was refreshed since (take its token with RefreshLease)",
                )
            ]
        )


def check_same_account(stored: GarminTokens, reported: GarminTokens) -> None:
    """Refuse (INVALID_ARGUMENT) tokens that are not a refresh of the stored session: another
    OAuth1 token (garth: its token, secret or MFA token), another DI client id or Garmin
    account, another kind of session or another domain."""
    if stored.kind is not reported.kind:
        raise InvalidArgument([FieldViolation("session", "is not the leased session's kind")])
    if stored.domain != reported.domain:
        # A session refreshes at its own domain's Garmin (garmin.cn's diauth for its
        # accounts): stored under the other, its next refresh would go to the wrong one.
        raise InvalidArgument(
            [
                FieldViolation(
                    "session.domain",
                    f"is {reported.domain}, the leased session's is {stored.domain}",
                )
            ]
        )
    if stored.oauth1 is not None and reported.oauth1 is not None:
        raise_if_any(_other_oauth1(stored.oauth1, reported.oauth1))
    elif stored.di_client_id != reported.di_client_id:
        raise InvalidArgument(
            [FieldViolation("session.di_client_id", "is not the leased session's client id")]
        )
    elif _other_di_account(stored, reported):
        # Every session of one app shares its client id: the account is in the access token.
        # Stored, the other account's rotating refresh token would sit in two rows, and the
        # first refresh of either would end the other.
        raise InvalidArgument([FieldViolation("session", "is another Garmin account's session")])


def _other_oauth1(stored: OAuth1Token, reported: OAuth1Token) -> list[FieldViolation]:
    """What differs between a garth report's OAuth1 token and the stored one. A garth exchange
    never changes the OAuth1 token, so a real refresh reports it as granted; one with another
    secret, or without its MFA token (optional in the proto, easily dropped by a holder that
    rebuilds the session), signs the next exchange wrongly: Garmin refuses it (401) and the
    session, which cannot be signed in again, would end for good."""
    if stored.oauth_token != reported.oauth_token:
        return [FieldViolation("session.oauth1", "is not the leased session's OAuth1 token")]
    return [
        FieldViolation(f"session.oauth1.{name}", f"is not the leased session's {name}")
        for name in ("oauth_token_secret", "mfa_token")
        if getattr(stored, name) != getattr(reported, name)
    ]


def _other_di_account(stored: GarminTokens, reported: GarminTokens) -> bool:
    """Whether the two DI sessions are known to be different Garmin accounts (a token that
    names none cannot tell)."""
    if stored.kind is not SessionKind.DI_OAUTH2:
        return False
    ours = di_account(stored.oauth2.access_token)
    theirs = di_account(reported.oauth2.access_token)
    return ours is not None and theirs is not None and ours != theirs


# How much earlier than the stored access token a reported one may say it was issued: JWT
# times come from Garmin's diauth hosts, whose clocks may differ, and refusing a holder's real
# refresh would lose the session (its refresh killed the stored refresh token). Rotations of
# one session are hours apart (an access token's lifetime).
ISSUED_AT_SKEW_SECONDS = 300


def check_not_rotated_away(
    locked: SessionRow, stored: GarminTokens, reported: GarminTokens
) -> None:
    """Refuse (INVALID_ARGUMENT) a DI report from an earlier rotation than the stored session:
    its refresh token is dead at Garmin, and stored, the session's next refresh would end it
    (and presenting a used refresh token may revoke the live one). Told by the row's digests of
    its latest rotations, and, for older ones, by an access token issued before the stored one
    (a holder's own refresh always issues a newer one), beyond the skew of Garmin's clocks."""
    if reported.kind is not SessionKind.DI_OAUTH2:
        return
    ours, theirs = (
        di_issued_at(stored.oauth2.access_token),
        di_issued_at(reported.oauth2.access_token),
    )
    older = ours is not None and theirs is not None and theirs < ours - ISSUED_AT_SKEW_SECONDS
    if older or rotated_away(locked, reported.oauth2.refresh_token):
        raise InvalidArgument(
            [
                FieldViolation(
                    "session.oauth2.refresh_token",
                    "comes from an earlier rotation of this session, dead at Garmin since "
                    "(take its token with RefreshLease)",
                )
            ]
        )


def ended_or_lost(uow: UnitsOfWork, user_id: str) -> SessionNotActive | LeaseLost:
    """What a holder's call answers when the refresh it waited on left the session not
    ACTIVE: SESSION_NOT_ACTIVE when Garmin rejected the session (AUTH_EXPIRED: a person must
    reconnect, as the refresh that met the rejection answers), LEASE_LOST when it was deleted
    or replaced by a new sign-in meanwhile."""
    with uow() as unit:
        row = unit.leases.find(user_id)
    if row is not None and row.state is SessionState.AUTH_EXPIRED:
        return SessionNotActive("Garmin rejected the session's refresh; the user must log in again")
    return LeaseLost("the lease ended while the session was being refreshed")
