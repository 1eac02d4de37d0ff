"""Each change of a session row (garmin_authentication_state), written once.

The session and lease repositories build their statements from these: whichever path
installs tokens, stores refreshed ones, invalidates, disconnects or ends a lease, the row
ends up the same. Values are bound parameters (`p_*`), so statements are built once, at
import; the repositories pass the parameters.

How a row reads: an MFA_PENDING row whose challenge is gone (expired, used up, deleted)
reads as what it settles to, AUTH_EXPIRED when the session had been invalidated and
NOT_CONNECTED otherwise. Reads show it that way without writing; housekeeping writes it.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    bindparam,
    case,
    exists,
    or_,
    select,
    type_coerce,
)

from auth_service.domain.models import SessionState
from auth_service.storage.models import (
    REASON_LENGTH,
    GarminAuthenticationState,
    GarminMfaChallenge,
    UTCDateTime,
)

T: Table = cast(Table, GarminAuthenticationState.__table__)
_CHALLENGE: Table = cast(Table, GarminMfaChallenge.__table__)
ACTIVE = SessionState.ACTIVE

# --- bound parameters (typed, so SQLite gets its UTC-normalised timestamps) --------------

NOW = bindparam("p_now", type_=UTCDateTime())
VALIDATED_AT = bindparam("p_validated_at", type_=UTCDateTime())
TOKENS_EXPIRE_AT = bindparam("p_tokens_expire_at", type_=UTCDateTime())
REFRESH_EXPIRES_AT = bindparam("p_refresh_expires_at", type_=UTCDateTime())
KIND = bindparam("p_kind", type_=T.c.session_kind.type)
USER_ID = bindparam("p_user_id", type_=T.c.user_id.type)
LEASE_ID = bindparam("p_lease_id", type_=T.c.lease_id.type)
CIPHERTEXT = bindparam("p_ciphertext", type_=T.c.session_ciphertext.type)
VERSION = bindparam("p_version", type_=T.c.session_version.type)
REASON = bindparam("p_reason", type_=T.c.invalidated_reason.type)
KEEPALIVE_NOT_BEFORE = bindparam("p_keepalive_not_before", type_=UTCDateTime())
ROTATED_REFRESH_SHA256 = bindparam(
    "p_rotated_refresh_sha256", type_=T.c.rotated_refresh_sha256.type
)
IMPORTED_REFRESH_SHA256 = bindparam(
    "p_imported_refresh_sha256", type_=T.c.imported_refresh_sha256.type
)
EXCHANGED_TICKET_SHA256 = bindparam(
    "p_exchanged_ticket_sha256", type_=T.c.exchanged_ticket_sha256.type
)


def reason_param(reason: str) -> str:
    """An invalidation reason as stored (the column's width)."""
    return reason[:REASON_LENGTH]


# --- the changes ---------------------------------------------------------------------------

# No lease: its lease_id is dead from now on. fencing_token is deliberately absent: it only
# ever grows, across delete and re-login.
ENDED_LEASE: dict[str, Any] = {
    "lease_id": None,
    "lease_holder": None,
    "lease_acquired_at": None,
    "lease_expires_at": None,
    "lease_caller": None,
}

# No refresh claim: whenever the stored tokens change, a claim on refreshing the old ones is
# over (its holder's answer is about a session version that is gone).
CLAIM_ENDED: dict[str, Any] = {"refresh_claim_id": None, "refresh_claimed_until": None}

# No refresh token rotated away: the stored tokens did not come from rotating the row's
# previous ones (new credentials, or none at all).
NOTHING_ROTATED: dict[str, Any] = {"rotated_refresh_sha256": None}

# Login, SubmitMfa, ImportSession: the newest credentials win, so a live lease on the old
# session ends and its holder's later reports answer LEASE_LOST. p_validated_at is now when
# Garmin just issued or refreshed the tokens, NULL for tokens stored as given.
# p_rotated_refresh_sha256: NULL, but for a token file's pair refreshed before it was
# stored: the digest of the file's refresh token, which that refresh killed (so the same
# file sent again is known for a retry, views.rotated_away).
# p_imported_refresh_sha256: the digest of the DI refresh token an ImportSession brought (the
# file's, or the one given), NULL for a sign-in (models: no other user id may import it).
# p_exchanged_ticket_sha256: the digest of the service ticket an ExchangeServiceTicket
# exchanged, NULL for any other way in (a retry with that ticket is answered from the row).
INSTALLED: dict[str, Any] = {
    **ENDED_LEASE,
    **CLAIM_ENDED,
    "rotated_refresh_sha256": ROTATED_REFRESH_SHA256,
    "imported_refresh_sha256": IMPORTED_REFRESH_SHA256,
    "exchanged_ticket_sha256": EXCHANGED_TICKET_SHA256,
    "state": ACTIVE,
    "session_ciphertext": CIPHERTEXT,
    "session_version": T.c.session_version + 1,
    "access_token_expires_at": TOKENS_EXPIRE_AT,
    "session_kind": KIND,
    "refresh_token_expires_at": REFRESH_EXPIRES_AT,
    "last_validated_at": VALIDATED_AT,
    "invalidated_reason": None,
    "invalidated_at": None,
    # New credentials: keep-alive takes them whenever they are due, none failed yet, and
    # Garmin has refused none of their exchanges.
    "keepalive_not_before": None,
    "keepalive_failures": 0,
    "first_doubtful_refusal_at": None,
    "updated_at": NOW,
}

# Garmin accepted the session (GetStatus with validate, or a refresh that just worked).
VALIDATED: dict[str, Any] = {"last_validated_at": NOW, "updated_at": NOW}

# Refreshed tokens replace the stored ones (holder's report, central refresh, validation).
# p_keepalive_not_before: when keep-alive may pick the session again (the service's own
# refreshes: auth_service.domain.policies.keepalive_not_before; a holder's report: NULL).
# p_rotated_refresh_sha256: the digest of the DI refresh token the refresh killed, before
# the ones kept (NULL for garth sessions), so an import retrying with one of them is known
# for a retry (models). A refresh that worked ends keep-alive's count of failed attempts,
# and the evidence of doubtful refusals of the garth session's exchange (the tokens changed).
REFRESHED: dict[str, Any] = {
    **VALIDATED,
    **CLAIM_ENDED,
    "rotated_refresh_sha256": ROTATED_REFRESH_SHA256,
    "session_ciphertext": CIPHERTEXT,
    "session_version": T.c.session_version + 1,
    "access_token_expires_at": TOKENS_EXPIRE_AT,
    "session_kind": KIND,
    "refresh_token_expires_at": REFRESH_EXPIRES_AT,
    "keepalive_not_before": KEEPALIVE_NOT_BEFORE,
    "keepalive_failures": 0,
    "first_doubtful_refusal_at": None,
}

# Keep-alive leaves the session alone until p_keepalive_not_before (bookkeeping of keep-alive
# only: updated_at stays): its account waits out a cooldown someone else's 429 started.
KEEPALIVE_DEFERRED: dict[str, Any] = {"keepalive_not_before": KEEPALIVE_NOT_BEFORE}


def keepalive_failed(hold_back: ColumnElement[Any]) -> dict[str, Any]:
    """Keep-alive's own attempt failed or met Garmin's 429: one more failed attempt, and held
    back until `hold_back`, in the same statement (keep-alive orders by the count and holds
    back longer). `hold_back` may read the count: SET reads the row as it was before."""
    return {"keepalive_not_before": hold_back, "keepalive_failures": T.c.keepalive_failures + 1}


# Garmin refused the garth session's exchange in doubt for the first time since its tokens
# last changed (the session stays as it is; views.SessionRow.first_doubtful_refusal_at).
# Evidence the refresher keeps, not a change callers see: updated_at stays.
DOUBTFUL_REFUSAL_NOTED: dict[str, Any] = {"first_doubtful_refusal_at": NOW}

# No stored session any more (invalidated or deleted): secrets wiped, lease ended.
_WIPED: dict[str, Any] = {
    **ENDED_LEASE,
    **CLAIM_ENDED,
    **NOTHING_ROTATED,
    "session_ciphertext": None,
    "access_token_expires_at": None,
    "session_kind": None,
    "refresh_token_expires_at": None,
    "keepalive_not_before": None,
    "keepalive_failures": 0,
    "first_doubtful_refusal_at": None,
    "updated_at": NOW,
}

# Garmin definitely rejected the session: AUTH_EXPIRED, secrets wiped, lease ended.
INVALIDATED: dict[str, Any] = {
    **_WIPED,
    "state": SessionState.AUTH_EXPIRED,
    "session_version": T.c.session_version + 1,
    "invalidated_reason": REASON,
    "invalidated_at": NOW,
}

# DeleteSession: the row stays, as NOT_CONNECTED, so fencing tokens keep growing if the user
# returns. The version grows only when there were tokens to wipe.
DISCONNECTED: dict[str, Any] = {
    **_WIPED,
    "state": SessionState.NOT_CONNECTED,
    "session_version": case(
        (T.c.session_ciphertext.is_not(None), T.c.session_version + 1),
        else_=T.c.session_version,
    ),
    "last_validated_at": None,
    "last_synced_at": None,
    "synced_through": None,
    "last_sync_attempt_at": None,
    "invalidated_reason": None,
    "invalidated_at": None,
}

# --- abandoned MFA -------------------------------------------------------------------------

# A challenge lives until it expires, and after that while a SubmitMfa that claimed it before
# then still waits for Garmin's answer (its code may well be accepted).
LIVE_CHALLENGE_ROW = or_(
    _CHALLENGE.c.expires_at > NOW,
    and_(_CHALLENGE.c.claimed_until.is_not(None), _CHALLENGE.c.claimed_until > NOW),
)
_LIVE_CHALLENGE = (
    exists().where(_CHALLENGE.c.user_id == T.c.user_id, LIVE_CHALLENGE_ROW).correlate(T)
)
# MFA_PENDING is only ever set while the row holds no working session, so it falls back to
# what the row was before the login started.
ABANDONED_MFA: ColumnElement[bool] = and_(T.c.state == SessionState.MFA_PENDING, ~_LIVE_CHALLENGE)
SETTLED_STATE = case(
    (T.c.invalidated_at.is_not(None), SessionState.AUTH_EXPIRED.value),
    else_=SessionState.NOT_CONNECTED.value,
)
# The state as callers see it at p_now.
_seen_state = type_coerce(case((ABANDONED_MFA, SETTLED_STATE), else_=T.c.state), T.c.state.type)

# The row as callers see it: every column, with the state as seen.
AS_SEEN = select(
    *(_seen_state.label("state") if column.name == "state" else column for column in T.c)
)


def seen_in(state: SessionState) -> ColumnElement[bool]:
    """Rows that callers see in `state` at p_now."""
    return _seen_state == state


# Nobody holds a live lease on the row (never leased, released, or expired).
FREE = or_(T.c.lease_expires_at.is_(None), T.c.lease_expires_at <= NOW)
# The row is held by exactly this lease, which has not expired, on an ACTIVE session.
LIVE = and_(T.c.lease_id == LEASE_ID, T.c.lease_expires_at > NOW, T.c.state == ACTIVE)
