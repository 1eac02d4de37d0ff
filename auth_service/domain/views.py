"""Read models: what a stored session row looks like to callers (never a secret)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from typing import Protocol

from auth_service.domain.models import LeaseView, SessionKind, SessionState, SessionStatusView


class SessionRow(Protocol):
    """A garmin_authentication_state row as the repositories return it (the columns by
    name, with these types)."""

    @property
    def user_id(self) -> str: ...
    @property
    def state(self) -> SessionState: ...
    @property
    def session_ciphertext(self) -> bytes | None: ...
    @property
    def session_version(self) -> int: ...
    @property
    def access_token_expires_at(self) -> datetime | None: ...
    @property
    def session_kind(self) -> SessionKind | None: ...
    @property
    def refresh_token_expires_at(self) -> datetime | None: ...
    @property
    def refresh_claim_id(self) -> str | None: ...
    @property
    def refresh_claimed_until(self) -> datetime | None: ...
    @property
    def lease_id(self) -> str | None:
        """The SHA-256 digest of the lease id (auth_service.domain.lease_ids), never the id."""
        ...

    @property
    def lease_holder(self) -> str | None: ...
    @property
    def lease_acquired_at(self) -> datetime | None: ...
    @property
    def lease_expires_at(self) -> datetime | None: ...
    @property
    def fencing_token(self) -> int: ...
    @property
    def last_validated_at(self) -> datetime | None: ...
    @property
    def last_synced_at(self) -> datetime | None: ...
    @property
    def synced_through(self) -> datetime | None: ...
    @property
    def last_sync_attempt_at(self) -> datetime | None: ...
    @property
    def invalidated_reason(self) -> str | None: ...
    @property
    def invalidated_at(self) -> datetime | None: ...
    @property
    def updated_at(self) -> datetime: ...
    @property
    def lease_caller(self) -> str | None: ...
    @property
    def rotated_refresh_sha256(self) -> str | None:
        """Digests of DI refresh tokens rotations replaced, newest first: the latest three
        and the session's first (rotated_history), never the tokens."""
        ...

    @property
    def exchanged_ticket_sha256(self) -> str | None:
        """The digest of the service ticket the session was exchanged from (None: another
        way in): service_ticket_digest."""
        ...

    @property
    def first_doubtful_refusal_at(self) -> datetime | None:
        """When Garmin first refused the garth session's exchange in doubt since its tokens
        last changed (policies.doubtful_refusal_ends); None: not since."""
        ...


def live_lease(row: SessionRow, now: datetime) -> LeaseView | None:
    """The row's lease if it is still live at `now`."""
    if (
        row.lease_id is None
        or row.lease_expires_at is None
        or row.lease_acquired_at is None
        or row.lease_expires_at <= now
    ):
        return None
    return LeaseView(
        lease_digest=row.lease_id,
        user_id=row.user_id,
        holder=row.lease_holder or "",
        fencing_token=row.fencing_token,
        acquired_at=row.lease_acquired_at,
        expires_at=row.lease_expires_at,
    )


def live_lease_of(row: SessionRow, lease_digest: str, now: datetime) -> LeaseView | None:
    """The row's live lease at `now` if it is the one `lease_digest` names (None: expired,
    released, taken over, or ended by new credentials)."""
    lease = live_lease(row, now)
    return lease if lease is not None and lease.lease_digest == lease_digest else None


def refresh_claimed(row: SessionRow, now: datetime) -> bool:
    """Whether a refresh of the row's session is out at Garmin at `now`: a claim that has not
    run out (a released or stored claim is gone; an expired one's holder died)."""
    claimed_until = row.refresh_claimed_until
    return claimed_until is not None and claimed_until > now


def status_view(row: SessionRow, now: datetime) -> SessionStatusView:
    # Why and when the session ended belong to AUTH_EXPIRED only (the contract); the row keeps
    # them through a new login's MFA_PENDING, which falls back to AUTH_EXPIRED if abandoned.
    ended = row.state == SessionState.AUTH_EXPIRED
    return SessionStatusView(
        user_id=row.user_id,
        state=row.state,
        session_version=row.session_version,
        last_validated_at=row.last_validated_at,
        access_token_expires_at=row.access_token_expires_at,
        kind=row.session_kind,
        refresh_token_expires_at=row.refresh_token_expires_at,
        last_synced_at=row.last_synced_at,
        synced_through=row.synced_through,
        last_sync_attempt_at=row.last_sync_attempt_at,
        invalidated_reason=row.invalidated_reason if ended else None,
        invalidated_at=row.invalidated_at if ended else None,
        updated_at=row.updated_at,
        lease=live_lease(row, now),
    )


# --- refresh tokens rotated away ---------------------------------------------------------


# A row keeps ROTATIONS_KEPT refresh tokens its rotations replaced since the session was
# installed, as the first DIGEST_LENGTH hex digits (64 bits) of each one's SHA-256: enough to
# tell a user's own few tokens apart, and the four fit the 64-character column. The oldest is
# the token the session started from, kept for the session's life: for an imported token
# file, the file's own, which the same file sent again presents however long after (only the
# service and its lease holders ever saw the ones rotated since). The other three are the
# latest rotations' (an import retried while workers' RefreshLease and keep-alive rotate).
ROTATIONS_KEPT = 4
DIGEST_LENGTH = 16


def refresh_token_digest(refresh_token: str) -> str:
    """What a row keeps of a refresh token a rotation replaced: the start of its lowercase
    hex SHA-256. Unkeyed, as lease ids (auth_service.domain.lease_ids): Garmin's refresh
    tokens carry far too much entropy for a digest to be inverted or guessed."""
    return hashlib.sha256(refresh_token.encode("utf-8")).hexdigest()[:DIGEST_LENGTH]


def imported_refresh_digest(refresh_token: str) -> str:
    """What a row keeps of the DI refresh token an import brought: its whole lowercase hex
    SHA-256 (compared across rows, so no shortened digest may collide; unkeyed, as
    refresh_token_digest)."""
    return hashlib.sha256(refresh_token.encode("utf-8")).hexdigest()


def service_ticket_digest(service_ticket: str, service_url: str) -> str:
    """What a row keeps of the service ticket its session was exchanged from, with the service
    URL it was exchanged for: their lowercase hex SHA-256 (a ticket is single-use and lives
    about a minute; what is kept only recognises the same exchange asked again)."""
    return hashlib.sha256(f"{service_url}\n{service_ticket}".encode()).hexdigest()


def exchanged_from(row: SessionRow, ticket_digest: str) -> bool:
    """Whether the row's ACTIVE session is the one ExchangeServiceTicket got for the ticket
    and service URL of `ticket_digest` (service_ticket_digest): the ticket is spent, and the
    session is its answer."""
    return (
        row.state is SessionState.ACTIVE
        and row.exchanged_ticket_sha256 is not None
        and hmac.compare_digest(row.exchanged_ticket_sha256, ticket_digest)
    )


def rotated_history(kept: str | None, replaced_refresh_token: str) -> str:
    """The row's digests once a rotation replaced `replaced_refresh_token`: its digest first,
    then the ones kept before; past ROTATIONS_KEPT the second oldest is dropped (the oldest,
    the session's origin, stays)."""
    history = refresh_token_digest(replaced_refresh_token) + (kept or "")
    if len(history) <= ROTATIONS_KEPT * DIGEST_LENGTH:
        return history
    latest = history[: (ROTATIONS_KEPT - 1) * DIGEST_LENGTH]
    return latest + history[-DIGEST_LENGTH:]


def rotated_away(row: SessionRow, refresh_token: str) -> bool:
    """Whether `refresh_token` is one the row's latest rotations replaced (dead at Garmin
    since), each digest compared in constant time."""
    kept = row.rotated_refresh_sha256 or ""
    presented = refresh_token_digest(refresh_token).encode()
    digests = [kept[i : i + DIGEST_LENGTH] for i in range(0, len(kept), DIGEST_LENGTH)]
    return any(hmac.compare_digest(digest.encode(), presented) for digest in digests)
